"""Attention rollout and transformer attribution; the attention recorder; hook/swap release for every
attention-based method (rollout, transformer_attribution, lrp, daam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explainer_fixtures import (
    mass_inside,
    planted_classifier,
    planted_images,
    randomization_check,
    tiny_probe,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip.modeling_clip import eager_attention_forward

import vfmxai.explainers.attention as attention_mod
import vfmxai.explainers.daam  # noqa: F401  (registers daam)
import vfmxai.explainers.lrp  # noqa: F401  (registers lrp)
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get
from vfmxai.explainers.attention import gradient_rollout, record_attention, rollout_matrix, swap_attention


def test_recorded_attention_equals_transformers_eager_attention():
    model = tiny_probe()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = model(images)
        with swap_attention(model.backbone, eager_attention_forward):
            expected = model.backbone(images, output_attentions=True).attentions
        with record_attention(model.backbone) as records:
            logits = model(images)
    assert len(records) == model.backbone.num_blocks == len(expected)
    for record, want in zip(records, expected, strict=True):
        torch.testing.assert_close(record.weights, want)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)


HEAD_A = [[0.5, 0.5], [0.2, 0.8]]
HEAD_B = [[0.9, 0.1], [0.6, 0.4]]


@pytest.mark.parametrize(
    ("fusion", "expected"),
    [
        # mean of the heads = [[.7, .3], [.4, .6]]; + I, row-normalised
        ("mean", [[1.7 / 2, 0.3 / 2], [0.4 / 2, 1.6 / 2]]),
        ("max", [[1.9 / 2.4, 0.5 / 2.4], [0.6 / 2.4, 1.8 / 2.4]]),
        ("min", [[1.5 / 1.6, 0.1 / 1.6], [0.2 / 1.6, 1.4 / 1.6]]),
    ],
)
def test_rollout_one_block_by_hand(fusion, expected):
    attention = torch.tensor([[HEAD_A, HEAD_B]])  # (B=1, heads=2, T=2, T=2)
    torch.testing.assert_close(rollout_matrix([attention], fusion)[0], torch.tensor(expected))


def test_rollout_two_blocks_by_hand():
    first = torch.tensor([[HEAD_A]])  # + I, row-normalised: [[.75, .25], [.1, .9]]
    second = torch.tensor([[[[1.0, 0.0], [0.6, 0.4]]]])  # -> [[1, 0], [.3, .7]]
    expected = torch.tensor([[0.75, 0.25], [0.3 * 0.75 + 0.7 * 0.1, 0.3 * 0.25 + 0.7 * 0.9]])
    torch.testing.assert_close(rollout_matrix([first, second])[0], expected)
    torch.testing.assert_close(
        rollout_matrix([first, second], start_block=1)[0], torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    )


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_rows_sum_to_one(fusion):
    gen = torch.Generator().manual_seed(0)
    attentions = [torch.softmax(torch.randn(3, 4, 17, 17, generator=gen), dim=-1) for _ in range(4)]
    rows = rollout_matrix(attentions, fusion).sum(dim=-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


def _injected(monkeypatch, attentions: list[torch.Tensor]) -> None:
    """Make the recorder's eager attention use the given probabilities, block after block."""
    calls = iter(attentions)

    def fake(query, key, value, mask, scaling):
        weights = next(calls).to(value)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(attention_mod, "eager_attention", fake)


def test_rollout_explainer_reads_the_class_row_of_the_injected_attention(monkeypatch):
    model = tiny_probe()
    b, heads, tokens = 2, model.backbone.num_heads, 17
    gen = torch.Generator().manual_seed(1)
    attentions = [
        torch.softmax(3 * torch.randn(b, heads, tokens, tokens, generator=gen), -1) for _ in range(4)
    ]
    _injected(monkeypatch, attentions)
    with get("rollout", model) as explainer:
        raw = explainer.attribute(torch.rand(b, 3, 32, 32), torch.zeros(b, dtype=torch.long))
    rollout = np.broadcast_to(np.eye(tokens), (b, tokens, tokens))
    for a in attentions:  # the paper's recipe, written out independently
        fused = a.numpy().mean(axis=1) + np.eye(tokens)
        rollout = (fused / fused.sum(axis=-1, keepdims=True)) @ rollout
    np.testing.assert_allclose(raw.numpy(), rollout[:, 0, 1:].reshape(b, 4, 4), rtol=1e-5)


def test_rollout_is_a_valid_class_agnostic_map():
    model = tiny_probe()
    images = torch.rand(3, 3, 32, 32)
    with get("rollout", model, head_fusion="max") as explainer:
        maps = explainer(images, torch.tensor([0, 1, 2]))
        again = explainer(images, torch.tensor([2, 0, 1]))
        raw = explainer.attribute(images, torch.tensor([0, 1, 2]))
    assert maps.shape == (3, 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.equal(maps, again)
    assert (raw > 0).all() and (
        raw.flatten(1).sum(1) < 1
    ).all()  # a row of a stochastic matrix, minus the cls entry


def test_options_are_validated():
    model = tiny_probe()
    with pytest.raises(VfmxaiError, match="head_fusion"):
        get("rollout", model, head_fusion="median")
    with pytest.raises(VfmxaiError, match="start_block"):
        get("rollout", model, start_block=4)
    with pytest.raises(VfmxaiError, match="start_block"):
        get("transformer_attribution", model, start_block=-1)


def test_gradient_rollout_by_hand():
    a1 = torch.tensor(
        [
            [[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]],
            [[0.5, 0.25, 0.25], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]],
        ]
    )
    g1 = torch.tensor([[[1.0, -1, 2], [0, 1, 0], [1, 0, -1]], [[0.0, 2, -2], [1, 0, 1], [0, -1, 1]]])
    # E_h[(g ⊙ a)^+] = [[.1, .25, .5], [.1, .3, .3], [.2, 0, .2]]; R1 = I + that
    a2 = torch.full((2, 3, 3), 1 / 3)
    g2 = torch.zeros(2, 3, 3)
    g2[:, 0, 2] = 1.5  # only the class token's attention to token 2 gets a positive weight: Ā2[0, 2] = .5
    g2[1, 1, 1] = -3.0  # negative products are clipped
    relevance = gradient_rollout([a1[None], a2[None]], [g1[None], g2[None]])[0]
    r1 = torch.tensor([[1.1, 0.25, 0.5], [0.1, 1.3, 0.3], [0.2, 0.0, 1.2]])
    expected = r1.clone()
    expected[0] += 0.5 * r1[2]  # R2 = R1 + Ā2 R1
    torch.testing.assert_close(relevance, expected)
    torch.testing.assert_close(
        gradient_rollout([a1[None], a2[None]], [g1[None], g2[None]], start_block=1)[0, 0],
        torch.tensor([1.0, 0, 0.5]),
    )


def test_gradient_only_on_one_token_concentrates_the_map_there():
    """Every attention gradient zero but the class token's attention to patch j: the map is one-hot at j."""
    b, heads, tokens = 1, 4, 17
    attentions = [torch.full((b, heads, tokens, tokens), 1 / tokens) for _ in range(4)]
    gradients = [torch.zeros_like(a) for a in attentions]
    gradients[2][:, :, 0, 1 + 9] = 1.0
    relevance = gradient_rollout(attentions, gradients)[:, 0, 1:]
    assert relevance.argmax().item() == 9
    assert torch.count_nonzero(relevance) == 1


def test_transformer_attribution_matches_the_paper_on_transformers_own_attention():
    model = tiny_probe()
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    with get("transformer_attribution", model) as explainer:
        raw = explainer.attribute(images, targets)
    with swap_attention(model.backbone, eager_attention_forward):
        out = model.backbone(images, output_attentions=True)
        for a in out.attentions:
            a.retain_grad()
        logits = model.head(model.backbone.pooled(out.hidden_states[-1]))
        logits.gather(1, targets.view(-1, 1)).sum().backward()
    relevance = torch.eye(17).expand(2, 17, 17)
    for a in out.attentions:
        relevance = relevance + (a.grad * a).clamp_min(0).mean(dim=1).detach() @ relevance
    torch.testing.assert_close(raw, relevance[:, 0, 1:].reshape(2, 4, 4), rtol=1e-5, atol=1e-7)


def test_transformer_attribution_finds_the_planted_evidence():
    """Mass of the [0, 1] map inside the evidence square (chance: its area, 1/4); "mostly" = over half."""
    model = planted_classifier()
    images, labels, masks = planted_images(32, seed=123)
    with get("transformer_attribution", model) as explainer:
        share = mass_inside(explainer(images, labels), masks)
    assert share.mean() > 0.5


@pytest.mark.parametrize("method", ["rollout", "transformer_attribution"])
def test_model_randomisation_changes_the_maps(method):
    """Adebayo et al.: re-initialising the head and every block decorrelates the maps (a map that ignores the
    model, e.g. an edge detector, stays near 1). Same bound, 0.8, for every attention-based method."""
    model = planted_classifier()
    images = planted_images(8, seed=7)[0]
    assert randomization_check(method, model, images, n_blocks=model.backbone.num_blocks) < 0.8


def _hooks(model: torch.nn.Module) -> set[tuple[str, str, int]]:
    """Every hook on every module (transformers installs output-capturing hooks on the first forward)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {
        (name, kind, key) for name, m in model.named_modules() for kind in kinds for key in getattr(m, kind)
    }


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("rollout", {}),
        ("transformer_attribution", {}),
        ("lrp", {}),
        ("lrp", {"softmax_rule": "cp", "level": "pixel"}),
        ("daam", {}),
        ("daam", {"mode": "self_supervised"}),
    ],
)
def test_hooks_and_swapped_functions_are_released(method, options):
    model = tiny_probe()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
    hooks = _hooks(model)
    implementations = [m.config._attn_implementation for m in model.modules() if hasattr(m, "config")]
    registered = set(ALL_ATTENTION_FUNCTIONS)
    with get(method, model, **options) as explainer:
        explainer(images, torch.tensor([0, 1]))
    assert _hooks(model) == hooks
    assert [m.config._attn_implementation for m in model.modules() if hasattr(m, "config")] == implementations
    assert set(ALL_ATTENTION_FUNCTIONS) == registered
    with torch.no_grad():
        assert torch.equal(model(images), before)


@pytest.mark.parametrize("method", ["rollout", "transformer_attribution", "lrp", "daam"])
def test_swaps_are_restored_when_the_forward_fails(method):
    model = tiny_probe()
    model(torch.rand(1, 3, 32, 32))
    hooks = _hooks(model)
    registered = set(ALL_ATTENTION_FUNCTIONS)
    implementation = model.backbone.model.config._attn_implementation
    with get(method, model) as explainer:
        model.head.register_forward_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            explainer.attribute(torch.rand(1, 3, 32, 32), torch.tensor([0]))
        model.head._forward_hooks.clear()
    assert _hooks(model) == hooks
    assert set(ALL_ATTENTION_FUNCTIONS) == registered
    assert model.backbone.model.config._attn_implementation == implementation
