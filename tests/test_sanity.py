"""`vfmxai sanity`: Spearman's rho against scipy, the randomisation cascade, MPRT and random logit on methods whose
answer is known, and the command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from explainer_fixtures import planted_classifier, planted_images, tiny_probe
from run_fixtures import tiny_run_config, untrained_run
from scipy.stats import rankdata, spearmanr
from test_cli import assert_one_line_error
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from vfmxai.backbones import load_backbone
from vfmxai.classifier import LinearProbe
from vfmxai.cli import main
from vfmxai.evaluation.randomisation import RAW_STD, cascade, randomisation_steps, reinitialise_
from vfmxai.evaluation.sanity import SanitySettings, sanity_check
from vfmxai.explainers import Explainer, register
from vfmxai.explainers.base import _REGISTRY
from vfmxai.metrics import average_ranks, spearman_correlation


def test_spearman_matches_scipy_with_ties_and_is_nan_for_a_constant_map():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 6, 7), generator=gen).float()  # 42 pixels, 4 values: ties everywhere
    b = torch.randint(0, 6, (5, 6, 7), generator=gen).float() + 0.1 * a
    b[4] = 2.0
    rho = spearman_correlation(a, b)
    expected = [spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(a[:4], b[:4], strict=True)]
    assert rho[:4].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.isnan(rho[4])
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]])).tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0]]
    assert average_ranks(a.flatten(1)).numpy() == pytest.approx(np.stack([rankdata(x) for x in a.flatten(1)]))


def _perturbed(model):
    """A deep copy whose every parameter is moved off its init (a LayerNorm's ones and zeros, a zero mask token
    would otherwise look unchanged by a re-initialisation that redraws them)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _dinov2_registers_probe(tmp_path):
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "image_size": 32, "patch_size": 8}
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**small)).save_pretrained(tmp_path)
    return LinearProbe(load_backbone(str(tmp_path), image_size=32), 3).eval()


def _ala(tmp_path):
    return untrained_run(tiny_run_config(), tmp_path / "run")


CASCADES = {
    "clip_probe": (
        lambda tmp_path: tiny_probe(),
        [("head", ("head",)), ("final_norm", ("backbone.model.post_layernorm",)),
         *[(f"block {i + 1}", (f"backbone.model.encoder.layers.{i}",)) for i in (3, 2, 1, 0)],
         ("embeddings", ("backbone.model.embeddings", "backbone.model.pre_layrnorm"))],
        ("backbone.model.embeddings.class_embedding", "backbone.model.embeddings.position_embedding.weight"),
    ),
    "dinov2_registers_probe": (
        _dinov2_registers_probe,
        [("head", ("head",)), ("final_norm", ("backbone.model.layernorm",)),
         *[(f"block {i + 1}", (f"backbone.model.encoder.layer.{i}",)) for i in (1, 0)],
         ("embeddings", ("backbone.model.embeddings",))],
        tuple(f"backbone.model.embeddings.{n}" for n in ("cls_token", "mask_token", "register_tokens",
                                                          "position_embeddings")),
    ),
    "ala": (
        _ala,
        [("head", ("former", "map_features", "map_out", "ala_head", "perception")),
         ("final_norm", ("backbone.model.post_layernorm",)),
         *[(f"block {i + 1}", (f"backbone.model.encoder.layers.{i}",)) for i in (3, 2, 1, 0)],
         ("embeddings", ("backbone.model.embeddings", "backbone.model.pre_layrnorm"))],
        ("former.position",),
    ),
}


@pytest.mark.parametrize("kind", list(CASCADES))
def test_the_cascade_randomises_exactly_its_modules_head_down_raw_parameters_included(kind, tmp_path):
    build, expected_steps, raw = CASCADES[kind]
    model = _perturbed(build(tmp_path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = randomisation_steps(model)
    assert [(s.name, s.modules) for s in steps] == expected_steps
    listed: list[str] = []
    for step, randomised in cascade(model, seed=0):
        listed += step.modules
        changed = {n for n, p in randomised.named_parameters() if not torch.equal(p, model.get_parameter(n))}
        assert changed == {n for n, _ in model.named_parameters() if any(n.startswith(m + ".") for m in listed)}
        if step.name == steps[0].name:
            assert randomised is not model
    assert set(raw) <= changed  # the raw parameters go with the step that owns them (head or embeddings)
    assert changed == {n for n, _ in model.named_parameters()}  # every parameter belongs to some step
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's model is untouched


def test_a_raw_parameter_is_redrawn_seeded_with_its_own_mean_and_spread():
    module = torch.nn.Module()
    module.token = torch.nn.Parameter(3.0 + 0.5 * torch.randn(100, 100, generator=torch.Generator().manual_seed(0)))
    module.mask = torch.nn.Parameter(torch.zeros(1, 50_000))  # no spread of its own: RAW_STD
    module.table = torch.nn.Embedding(400, 50)  # an embedding table is redrawn too, not reset to N(0, 1)
    with torch.no_grad():
        module.table.weight.mul_(0.02)
    original = {n: p.detach().clone() for n, p in module.named_parameters()}
    redrawn = []
    for seed in (3, 3, 4):
        copied = copy.deepcopy(module)
        reinitialise_(copied, torch.Generator().manual_seed(seed))
        redrawn.append({n: p.detach() for n, p in copied.named_parameters()})
    assert all(torch.equal(redrawn[0][n], redrawn[1][n]) for n in original)
    assert not any(torch.equal(redrawn[0][n], redrawn[2][n]) for n in original)
    for name, (mean, std) in {"token": (3.0, 0.5), "mask": (0.0, RAW_STD), "table.weight": (0.0, 0.02)}.items():
        new = redrawn[0][name]
        assert not torch.equal(new, original[name])
        assert float(new.mean()) == pytest.approx(mean, abs=0.05 * std)
        assert float(new.std()) == pytest.approx(std, rel=0.05)
    assert float(torch.corrcoef(torch.stack([original["token"].flatten(), redrawn[0]["token"].flatten()]))[0, 1]) < 0.05


@pytest.fixture
def brightness_method():
    """`brightness`: each pixel's mean colour, a map that depends on neither the model nor the target."""

    @register("brightness")
    class Brightness(Explainer):
        def attribute(self, images, targets):
            return images.mean(dim=1)

    yield "brightness"
    del _REGISTRY["brightness"]


def _planted_dataset(n):
    images, labels, masks = planted_images(n, seed=7)
    return [{"image": images[i], "mask": masks[i], "label": int(labels[i]), "id": f"p{i}", "has_mask": True}
            for i in range(n)]


def test_mprt_and_random_logit_tell_a_model_blind_target_blind_map_from_gradcam(brightness_method, tmp_path):
    model = planted_classifier()
    settings = SanitySettings(n_images=4, draws=2)
    result = sanity_check(model, _planted_dataset(6), ["brightness", "gradcam"], tmp_path / "out", settings,
                          progress=False)
    bright, gradcam = result["methods"]["brightness"], result["methods"]["gradcam"]
    assert bright["mprt"]["mean"] == pytest.approx([1.0] * len(result["steps"]), abs=1e-6)
    assert bright["random_logit"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert gradcam["mprt"]["final"] < 0.5 and max(gradcam["mprt"]["mean"]) < 0.9
    assert gradcam["random_logit"]["mean"] < 0.5
    assert result["fails"] == {"mprt": ["brightness"], "random_logit": ["brightness"]}
    assert len(result["image_ids"]) == 4 and result["config"]["sanity"]["draw_seeds"] == [0, 1]
    others = np.asarray(result["config"]["sanity"]["random_logit_classes"])
    labels = np.asarray([int(i[1:]) for i in result["image_ids"]])
    planted_labels = planted_images(6, seed=7)[1].numpy()[labels]
    assert (others != planted_labels).all()  # the random class is never the label


def test_sanity_command_writes_its_files_refuses_overwrite_and_bad_methods(tmp_path, capsys, monkeypatch):
    untrained_run(tiny_run_config(), tmp_path / "run")
    out = tmp_path / "out"
    args = ["sanity", "--checkpoint", str(tmp_path / "run"), "--dataset", "synthetic", "--out", str(out),
            "--methods", "ala,gradcam", "--n-images", "2", "--draws", "1", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sanity.json", "sanity.md", "sanity.png"]
    result = json.loads((out / "sanity.json").read_text())
    assert set(result["methods"]) == {"ala", "gradcam"} and "ala" in result["fails"]["random_logit"]
    assert result["config"]["run"]["model"]["num_classes"] == 6
    printed = capsys.readouterr().out
    assert "random logit: ala" in printed and str(out / "sanity.json") in printed
    assert "| ALA (ours) |" in (out / "sanity.md").read_text()
    assert_one_line_error(capsys, main(args), "--out", "--force")
    assert main([*args, "--force"]) == 0
    capsys.readouterr()

    def no_loading(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("vfmxai.run_folder.Source.load", no_loading)
    fresh = ["--out", str(tmp_path / "fresh")]
    assert_one_line_error(capsys, main([*args, *fresh, "--methods", "ala,gradcma"]), "--methods", "gradcma")
    assert_one_line_error(capsys, main([*args, *fresh, "--draws", "0"]), "--draws")
    assert_one_line_error(capsys, main([*args, *fresh, "--fail-at", "2"]), "--fail-at")
    assert_one_line_error(capsys, main([*args, *fresh, "--device", "gpu0"]), "--device", "gpu0")
    assert_one_line_error(capsys, main([*args, *fresh, "--checkpoint", str(tmp_path / "nowhere")]), "--checkpoint")
    assert not (tmp_path / "fresh").exists()



def test_a_method_whose_maps_are_constant_has_no_verdict_rather_than_a_pass(tmp_path):
    """A constant map ranks nothing: no rho, no verdict (a randomised model could not 'change' it)."""

    @register("flat")
    class Flat(Explainer):
        def attribute(self, images, targets):
            return torch.zeros(images.shape[0], 4, 4)

    try:
        result = sanity_check(tiny_probe(num_classes=2), _planted_dataset(3), ["flat"], tmp_path / "out",
                              SanitySettings(n_images=3, draws=1), progress=False)
    finally:
        del _REGISTRY["flat"]
    flat = result["methods"]["flat"]
    assert flat["constant_maps"] == 3 and flat["mprt"]["fails"] is None and flat["random_logit"]["fails"] is None
    assert result["fails"] == {"mprt": [], "random_logit": []}
    assert "| flat | n/a | n/a | n/a | n/a | n/a |" in (tmp_path / "out" / "sanity.md").read_text()
    assert (tmp_path / "out" / "sanity.png").is_file()
