"""The ViT methods of issue 15 (raw attention, LeGrad, Beyond Intuition, ViT-ReciproCAM, TIS, ViT-CX) and GAE, which
is `transformer_attribution`: transcriptions of the published rules on small random models, known answers on
models whose evidence is known, and every backbone family (registers, no class token, a non-square input)."""

from __future__ import annotations

import pytest
import torch
from explainer_fixtures import (
    PatchMeanProbe,
    evidence_auc,
    hook_snapshot,
    mass_inside,
    planted_classifier,
    planted_images,
    tiny_probe,
)
from test_backbones_families import FAMILIES, HEIGHT, WIDTH, _saved
from torch import Tensor
from transformers.models.clip.modeling_clip import eager_attention_forward

from vfmxai import explainers
from vfmxai.backbones import load_backbone
from vfmxai.bench import DEFAULT_METHODS, BenchSettings, run_bench
from vfmxai.classifier import Classifier, LinearProbe
from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.runner import resolve_methods
from vfmxai.explainers import get
from vfmxai.explainers.attention import swap_attention
from vfmxai.explainers.token_masks import GAUSSIAN_3X3, kmeans
from vfmxai.run_folder import load_run
from vfmxai.vocabulary import METHODS, VIT_METHODS

CHEAP = {"tis": {"n_masks": 32}, "vit_cx": {"n_masks": 16}, "beyond_intuition": {"steps": 4}}


@pytest.fixture(scope="module")
def family_probes(tmp_path_factory) -> dict[str, LinearProbe]:
    probes = {}
    for family in FAMILIES:
        backbone = load_backbone(_saved(family, tmp_path_factory), image_size=32)
        torch.manual_seed(1)
        probes[family] = LinearProbe(backbone, 3).eval()
    return probes


def _eager(probe: LinearProbe, images: Tensor):
    """transformers' own eager attention: (hidden states, attention probabilities), both keeping the graph."""
    with swap_attention(probe.backbone, eager_attention_forward):
        out = probe.backbone(images, output_attentions=True)
    return out.hidden_states, out.attentions


def _query_row(matrix: Tensor, probe: LinearProbe) -> Tensor:
    """The class token's row, or the patch tokens' mean row; then the patch keys on the 4 x 6 grid."""
    backbone = probe.backbone
    prefix = backbone.num_prefix_tokens
    row = matrix[:, 0] if backbone.has_class_token else matrix[:, prefix:].mean(dim=1)
    return row[:, prefix:].reshape(-1, HEIGHT // 8, WIDTH // 8)


def test_the_new_methods_are_registered_and_the_papers_ten_unchanged():
    assert set(VIT_METHODS) <= set(explainers.available())
    assert len(METHODS) == 10 and not set(METHODS) & set(VIT_METHODS)
    assert "gae" not in explainers.available()  # GAE is transformer_attribution (next test)


@pytest.mark.parametrize("family", ["siglip", "dinov2_with_registers"])
def test_transformer_attribution_is_gae_written_out(family_probes, family):
    """GAE (Chefer et al. ICCV 2021): R = I; per block R += E_h[(∇A ⊙ A)^+] R; class-token row (no class token:
    the patch rows' mean), on transformers' own attention, with registers and with no class token."""
    probe = family_probes[family]
    images, targets = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2])
    with get("transformer_attribution", probe) as explainer:
        raw = explainer.attribute(images, targets)
    states, attentions = _eager(probe, images)
    for a in attentions:
        a.retain_grad()
    logits = probe.head(probe.backbone.pooled(states[-1]))
    logits.gather(1, targets.view(-1, 1)).sum().backward()
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens).expand(2, tokens, tokens)
    for a in attentions:
        relevance = relevance + (a.grad * a).clamp_min(0).mean(dim=1).detach() @ relevance
    torch.testing.assert_close(raw, _query_row(relevance, probe), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", ["siglip", "dinov2_with_registers", "clip"])
def test_raw_attention_is_the_last_blocks_recorded_row(family_probes, family):
    probe = family_probes[family]
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with get("raw_attention", probe) as explainer:
        raw = explainer.attribute(images, torch.tensor([0, 0]))
    with torch.no_grad():
        _, attentions = _eager(probe, images)
    torch.testing.assert_close(raw, _query_row(attentions[-1].mean(dim=1), probe), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n_layers", [None, 2])
def test_legrad_is_the_papers_rule_written_out(n_layers):
    """E^l = mean over heads and queries of ReLU(∂s^l/∂A^l), s^l the head read on h^(l); summed over the layers."""
    probe = tiny_probe()
    images, targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 2])
    with get("legrad", probe, n_layers=n_layers) as explainer:
        raw = explainer.attribute(images, targets)
    states, attentions = _eager(probe, images)
    k = len(attentions)
    total = 0
    for layer in range(k - (n_layers or k), k):
        score = probe.head(probe.backbone.pooled(states[layer + 1])).gather(1, targets.view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(score, [attentions[layer]], retain_graph=True)
        total = total + grad.clamp_min(0).mean(dim=(1, 2))
    torch.testing.assert_close(raw, total[:, 1:].reshape(2, 4, 4), rtol=1e-5, atol=1e-8)


def _beyond_intuition_written_out(probe: LinearProbe, images: Tensor, targets: Tensor, variant: str, steps: int):
    backbone = probe.backbone
    inputs: list[Tensor] = []
    handles = [backbone.attention(b).v_proj.register_forward_hook(lambda m, a, o: inputs.append(a[0]))
               for b in range(backbone.num_blocks)]
    states, attentions = _eager(probe, images)
    for handle in handles:
        handle.remove()
    score = probe.head(backbone.pooled(states[-1])).gather(1, targets.view(-1, 1)).sum()
    grads = torch.autograd.grad(score, list(attentions))
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens).expand(len(images), tokens, tokens)
    for b, (a, g) in enumerate(zip(attentions, grads, strict=True)):
        a = a.detach()
        if variant == "head":
            heads = range(a.shape[1])
            weight = torch.stack([(a[:, h].transpose(1, 2) @ g[:, h]).abs().mean(dim=(1, 2)) for h in heads], 1)
            mix = torch.einsum("bh,bhij->bij", weight / weight.sum(1, keepdim=True), a)
        else:
            attention = backbone.attention(b)
            z = inputs[b]
            scale = attention.out_proj(attention.v_proj(z)).norm(dim=-1) / z.norm(dim=-1)
            mix = a.mean(dim=1) @ torch.diag_embed(scale)
        relevance = relevance + mix @ relevance
    integrated = 0
    for alpha in torch.linspace(0, 1, steps):
        path_states, path_attentions = _eager(probe, alpha * images)
        path_score = probe.head(backbone.pooled(path_states[-1])).gather(1, targets.view(-1, 1)).sum()
        integrated = integrated + torch.autograd.grad(path_score, [path_attentions[-1]])[0]
    feedback = (integrated / steps).clamp_min(0).mean(dim=1)
    result = feedback * (relevance if variant == "head" else relevance.abs())
    return result[:, 0, 1:].reshape(len(images), 4, 4).detach()


@pytest.mark.parametrize("variant", ["head", "token"])
def test_beyond_intuition_is_the_papers_rule_written_out(variant):
    """T = F ⊙ P: attention perception (head-wise I_h-weighted heads, or token-wise value-path norm ratios) times
    the reasoning feedback (the last attention's integrated gradient), from transformers' own modules."""
    probe = tiny_probe()
    images, targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 2])
    with get("beyond_intuition", probe, variant=variant, steps=5, batch_size=3) as explainer:
        raw = explainer.attribute(images, targets)
    expected = _beyond_intuition_written_out(probe, images, targets, variant, steps=5)
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-9)


class OneTokenProbe(Classifier):
    """logits = W h^(k)[patch j] with no bias and no norm: the evidence is patch token j, and the logits are linear
    in that token."""

    def __init__(self, backbone, token: int):
        super().__init__()
        self.backbone, self.num_classes, self.token = backbone, 2, token
        self.head = torch.nn.Linear(backbone.hidden_size, 2, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        last = self.backbone(images).hidden_states[-1]
        return self.head(last[:, self.backbone.num_prefix_tokens + self.token])


@pytest.mark.parametrize("gaussian", [True, False])
def test_vit_reciprocam_peaks_at_the_token_the_head_reads(family_probes, gaussian):
    """Masking h^(k) (layer=-1) for a head that reads patch token j = (2, 3) of a 4 x 6 grid, with 4 registers
    before it: copy c keeps token j at the weight GAUSSIAN_3X3 gives it, so p_t rises with that weight — the map
    is highest at j, then its 4 neighbours, then its diagonals; every other copy reads a zero token (p_t = 1/2)."""
    torch.manual_seed(0)
    model = OneTokenProbe(family_probes["dinov2_with_registers"].backbone, token=2 * 6 + 3).eval()
    images = torch.rand(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    target = model(images).argmax(dim=1)
    with get("vit_reciprocam", model, layer=-1, gaussian=gaussian) as explainer:
        raw = explainer.attribute(images, target)[0]
    weights = torch.zeros(4, 6)
    weights[1:4, 2:5] = torch.tensor(GAUSSIAN_3X3) if gaussian else torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0.0]])
    assert raw.argmax().item() == 2 * 6 + 3
    for low, high in zip(*torch.where(weights.flatten()[:, None] < weights.flatten()[None, :]), strict=True):
        assert raw.flatten()[low] < raw.flatten()[high], (low, high)
    torch.testing.assert_close(raw[weights == 0], torch.full_like(raw[weights == 0], 0.5))


@pytest.mark.parametrize(("method", "options"), [("vit_reciprocam", {}), ("tis", {"n_masks": 64}),
                                                  ("tis", {"n_masks": 256, "sampler": "random"}),
                                                  ("vit_cx", {"n_masks": 32}), ("legrad", {}),
                                                  ("beyond_intuition", {"steps": 8}),
                                                  ("beyond_intuition", {"variant": "head", "steps": 8})])
def test_the_map_finds_the_planted_evidence(method, options):
    """The planted classifier decides by the coloured square: per image, the probability that an evidence pixel
    outranks another pixel (ROC AUC; chance 1/2) is over 0.9 on average. (Mass inside the square, chance 1/4, is
    over 1/2 for all but ViT-ReciproCAM, whose Gaussian neighbourhoods and 1/2-probability floor spread it, and
    TIS's random sampler, whose map keeps the floor of random masks, as RISE's: 0.49 at 256 masks.)"""
    model = planted_classifier()
    images, labels, masks = planted_images(24, seed=123)
    with get(method, model, **options) as explainer:
        maps = explainer(images, labels)
    assert evidence_auc(maps, masks).mean() > 0.9, float(evidence_auc(maps, masks).mean())
    if method != "vit_reciprocam" and options.get("sampler") != "random":
        assert mass_inside(maps, masks).mean() > 0.5, float(mass_inside(maps, masks).mean())


def test_tis_drops_tokens_instead_of_changing_pixels():
    """Each masked copy enters block 1 with the prefix and exactly keep_ratio·N patch tokens, in their order, and
    a mask keeping every token scores the unmasked image."""
    probe = tiny_probe()
    images, targets = torch.rand(1, 3, 32, 32), torch.tensor([1])
    lengths = []
    block = probe.backbone.blocks[1]
    handle = block.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    with get("tis", probe, n_masks=8, keep_ratio=0.25, batch_size=4) as explainer:
        explainer.attribute(images, targets)
    handle.remove()
    assert lengths[0] == 17 and set(lengths[1:]) == {1 + 4}
    with get("tis", probe, n_masks=8, keep_ratio=1.0) as explainer:
        raw = explainer.attribute(images, targets)
    with torch.no_grad():
        expected = probe(images).softmax(dim=1)[0, 1]
    torch.testing.assert_close(raw, torch.full_like(raw, float(expected)), rtol=1e-5, atol=1e-6)


def test_tis_says_it_cannot_explain_a_head_that_reads_the_patch_grid():
    model = PatchMeanProbe(load_backbone("tiny"), 2).eval()
    assert "reads the full patch grid" in explainers.inapplicable("tis", model)
    assert explainers.inapplicable("tis", tiny_probe()) is None
    with get("tis", model) as explainer, pytest.raises(VfmxaiError, match="method 'tis'.*patch grid"):
        explainer(torch.rand(1, 3, 32, 32), torch.tensor([0]))


def test_kmeans_separates_two_groups_the_same_way_in_any_batch():
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(10, 6, generator=gen) * 0.05 + torch.tensor([3.0, 0, 0, 0, 0, 0])
    b = torch.randn(7, 6, generator=gen) * 0.05 + torch.tensor([0, 0, 0, 3.0, 0, 0])
    points = torch.cat([a, b])[torch.randperm(17, generator=gen)]
    for cosine in (False, True):
        _, alone = kmeans(points[None], 2, cosine)
        _, batched = kmeans(torch.stack([torch.randn(17, 6, generator=gen), points]), 2, cosine)
        assert torch.equal(alone[0], batched[1])
        groups = {tuple(sorted(torch.where(alone[0] == c)[0].tolist())) for c in (0, 1)}
        first = torch.where(points[:, 0] > 1)[0].tolist()
        assert tuple(first) in groups and len(first) == 10


def test_options_are_validated():
    probe = tiny_probe()
    for method, options, word in [("legrad", {"n_layers": 5}, "n_layers"),
                                  ("beyond_intuition", {"variant": "x"}, "variant"),
                                  ("beyond_intuition", {"steps": 0}, "steps"),
                                  ("vit_reciprocam", {"layer": 9}, "layer"),
                                  ("tis", {"keep_ratio": 0.0}, "keep_ratio"), ("tis", {"n_masks": 0}, "n_masks"),
                                  ("tis", {"sampler": "grid"}, "sampler"),
                                  ("vit_cx", {"noise": -1.0}, "noise"), ("vit_cx", {"batch_size": 0}, "batch_size")]:
        with pytest.raises(VfmxaiError, match=f"method '{method}'.*{word}"):
            get(method, probe, **options)


@pytest.mark.parametrize("method", VIT_METHODS)
def test_every_family_gets_a_map_of_a_non_square_input(family_probes, method):
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(6))
    for family, probe in family_probes.items():
        with get(method, probe, **CHEAP.get(method, {})) as explainer:
            maps = explainer(images, torch.tensor([0, 2]))
        assert maps.shape == (2, HEIGHT, WIDTH), family
        assert torch.isfinite(maps).all(), family
        assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all(), f"{family}: a constant map"


@pytest.mark.parametrize("method", VIT_METHODS)
def test_a_planted_register_token_does_not_leak_into_the_map(tmp_path_factory, method):
    """Registers at 1000 (a thousand times a patch token): were they counted as patches, 4 + 24 tokens would not
    fit the 4 x 6 grid; the maps have the input's shape, are finite and not flat."""
    backbone = load_backbone(_saved("dinov2_with_registers", tmp_path_factory), image_size=32)
    with torch.no_grad():
        backbone.model.embeddings.register_tokens.fill_(1000.0)
    torch.manual_seed(1)
    probe = LinearProbe(backbone, 3).eval()
    images = torch.rand(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(7))
    with get(method, probe, **CHEAP.get(method, {})) as explainer:
        maps = explainer(images, torch.tensor([1, 1]))
    assert maps.shape == (2, HEIGHT, WIDTH) and torch.isfinite(maps).all()
    assert (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).all()


@pytest.mark.parametrize("method", VIT_METHODS)
def test_hooks_and_attention_swaps_are_released(method):
    probe = tiny_probe()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = probe(images)
    hooks = hook_snapshot(probe)
    implementations = [m.config._attn_implementation for m in probe.modules() if hasattr(m, "config")]
    with get(method, probe, **CHEAP.get(method, {})) as explainer:
        explainer(images, torch.tensor([0, 1]))
    assert hook_snapshot(probe) == hooks
    assert [m.config._attn_implementation for m in probe.modules() if hasattr(m, "config")] == implementations
    with torch.no_grad():
        assert torch.equal(probe(images), before)


def test_bench_times_the_new_methods_and_tis_on_a_linear_probe():
    assert set(VIT_METHODS) <= set(DEFAULT_METHODS)
    settings = BenchSettings(backbone="tiny", batch_size=2, repeats=1, warmup=0, methods=("tis", "legrad"),
                             method_options={"tis": {"n_masks": 4}}, insdel_steps=1, train=(), clock="cpu")
    rows = {row["task"]: row for row in run_bench(None, settings, echo=False)["rows"]}
    assert rows["explain:tis"]["options"] == {"n_masks": 4, "batch_size": 2, "explained": "linear_probe"}
    assert rows["explain:legrad"]["options"] == {} and rows["explain:legrad"]["images_per_s"] > 0


def test_evaluate_all_runs_the_new_methods_and_says_why_tis_cannot_explain_an_ala_model(trained_run):
    model = load_run(trained_run)[0]
    names, missing = resolve_methods("all", model)
    assert names == [*METHODS, *[m for m in explainers.available() if m not in METHODS and m != "tis"]]
    assert set(VIT_METHODS) - {"tis"} <= set(names)
    assert missing == {"tis": f"inapplicable: {explainers.inapplicable('tis', model)}"}


def test_the_commands_default_is_the_papers_ten_and_all_adds_the_new_methods():
    """evaluate, reproduce and sanity default to `paper` (Table 2's ten, what the paper reproduces), so the
    newer methods' costly defaults run only when asked for with `all` or by name."""
    from vfmxai.cli import _parser

    assert resolve_methods("paper", tiny_probe())[0] == [m for m in METHODS if m != "ala"]
    for command in (["evaluate"], ["reproduce"], ["sanity"]):
        args = _parser().parse_args([*command, "--dataset", "synthetic", "--out", "o", "--checkpoint", "r"]
                                    if command != ["reproduce"] else [*command, "--preset", "toy", "--dataset",
                                                                      "synthetic", "--seeds", "1", "--out", "o"])
        assert args.methods == "paper", command


def _unit(x: Tensor, dims) -> Tensor:
    return (x - x.amin(dims, keepdim=True)) / (x.amax(dims, keepdim=True) - x.amin(dims, keepdim=True))


def test_vit_cx_scores_each_mask_by_its_noise_corrected_causal_impact():
    """With the clustering fixed to two masks, S = Σ_m s_m M_m / Σ_m M_m with s_m = p(x⊙M + (1-M)ε) -
    p(x + (1-M)ε) + p(x), ε from the seed: recomputed here from the model's probabilities."""
    probe = tiny_probe()
    images, targets = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8)), torch.tensor([2])
    with get("vit_cx", probe, n_masks=2, noise=0.3, seed=4) as explainer:
        raw = explainer.attribute(images, targets)
    state = probe.backbone.hidden_states(images)[-2]
    maps = probe.backbone.patch_grid(state).flatten(2)
    maps = _unit(maps, -1)
    _, labels = kmeans(maps, 2, cosine=True)
    masks = torch.nn.functional.one_hot(labels, 2).float().transpose(1, 2) @ maps
    masks = _unit(torch.nn.functional.interpolate(masks.view(1, 2, 4, 4), size=(32, 32), mode="bilinear")[0], (1, 2))
    noise = 0.3 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        def p(x):
            return probe(x).softmax(dim=1)[:, 2]
        m = masks.unsqueeze(1)
        score = p(images * m + (1 - m) * noise) - p(images + (1 - m) * noise) + p(images)
    expected = (score.view(2, 1, 1) * masks).sum(0) / masks.sum(0)
    torch.testing.assert_close(raw[0], expected, rtol=1e-4, atol=1e-6)
