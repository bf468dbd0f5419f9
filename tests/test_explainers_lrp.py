"""LRP with the AttnLRP rules: conservation, difference from gradient × input, planted evidence,
randomisation."""

from __future__ import annotations

import pytest
import torch
from explainer_fixtures import (
    mass_inside,
    planted_classifier,
    planted_images,
    randomization_check,
    tiny_probe,
)
from torch import nn

import vfmxai.explainers.lrp as lrp_mod
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get

LRP_ATTENTION = lrp_mod.lrp_attention


def _tiny64() -> nn.Module:
    """The tiny CLIP probe in float64, so conservation can be checked to near machine precision."""
    return tiny_probe().double()


def _bias_like(model: nn.Module) -> list[nn.Parameter]:
    """Every constant entering the network additively: linear/LayerNorm biases, class/position embeddings."""
    params = [
        m.bias for m in model.modules() if isinstance(m, nn.Linear | nn.LayerNorm) and m.bias is not None
    ]
    embeddings = model.backbone.model.embeddings
    return [*params, embeddings.class_embedding, embeddings.position_embedding.weight]


def test_cp_rule_conserves_exactly_with_biases_zeroed():
    """Σ input relevance = target logit when nothing else can absorb relevance (rtol 1e-9 in float64)."""
    model = _tiny64()
    with torch.no_grad():
        for p in _bias_like(model):
            p.zero_()
    images, targets = torch.rand(3, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2])
    with get("lrp", model, softmax_rule="cp") as explainer:
        relevance, logits = explainer.relevance(images, targets)
    assert logits.abs().min() > 1e-3
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-9, atol=1e-12)


def _relevance_budget(model, images, targets, softmax_rule, monkeypatch):
    """(target logits summed, input relevance, bias relevance, relevance absorbed by the softmaxes)."""
    softmaxes = []

    def recording(name):
        inner = LRP_ATTENTION(name)

        def attend(module, query, key, value, mask, scaling=None, dropout=0.0, **kwargs):
            context, weights = inner(
                module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs
            )
            softmaxes.append((torch.matmul(query, key.transpose(-1, -2)).detach() * scaling, weights))
            return context, weights

        return attend

    monkeypatch.setattr(lrp_mod, "lrp_attention", recording)
    biases = _bias_like(model)
    with get("lrp", model, softmax_rule=softmax_rule) as explainer, explainer.rules():
        x = images.clone().requires_grad_(True)
        score = model(x).gather(1, targets.view(-1, 1)).sum()
        grads = torch.autograd.grad(score, [x, *biases, *(w for _, w in softmaxes)], allow_unused=True)
    grad_x, grad_b, grad_w = grads[0], grads[1 : 1 + len(biases)], grads[1 + len(biases) :]
    r_input = ((images - model.backbone.mean) * grad_x).sum()
    r_bias = sum((b * g).sum() for b, g in zip(biases, grad_b, strict=True) if g is not None)
    absorbed = torch.zeros((), dtype=images.dtype)
    for (z, s), g in zip(softmaxes, grad_w, strict=True):
        if g is None:
            continue
        s = s.detach()
        r_out = (s * g).sum()
        r_in = (z * s * (g - (s * g).sum(-1, keepdim=True))).sum()  # AttnLRP Prop. 3.1: x ⊙ (R - s ΣR)
        absorbed = absorbed + (r_out - r_in)
    return score.detach(), r_input, r_bias, absorbed


def test_conservation_with_biases_accounted_for(monkeypatch):
    """logit = input relevance + relevance of every bias-like constant (CP rule: nothing else absorbs any);
    with the AttnLRP softmax rule, + the share each softmax leaves in its implicit bias."""
    model = _tiny64()
    images, targets = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([2, 0])
    score, r_input, r_bias, absorbed = _relevance_budget(model, images, targets, "cp", monkeypatch)
    assert absorbed == 0
    torch.testing.assert_close(r_input + r_bias, score, rtol=1e-9, atol=1e-12)
    score, r_input, r_bias, absorbed = _relevance_budget(model, images, targets, "attnlrp", monkeypatch)
    assert absorbed.abs() > 1e-6
    torch.testing.assert_close(r_input + r_bias + absorbed, score, rtol=1e-7, atol=1e-9)


def test_relevance_agrees_with_the_explainer_map():
    model = tiny_probe()
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    with get("lrp", model, level="pixel") as pixel, get("lrp", model) as patch:
        relevance, _ = pixel.relevance(images, targets)
        pixel_map = pixel.attribute(images, targets)
        patch_map = patch.attribute(images, targets)
    torch.testing.assert_close(pixel_map, relevance.sum(dim=1))
    assert patch_map.shape == (2, 4, 4)
    torch.testing.assert_close(patch_map[:, 1, 2], relevance[:, :, 8:16, 16:24].sum(dim=(1, 2, 3)))


def test_rules_change_gradients_not_values():
    model = tiny_probe()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)
        with get("lrp", model) as explainer, explainer.rules():
            inside = model(images)
    torch.testing.assert_close(inside, plain, rtol=1e-5, atol=1e-6)


def test_lrp_differs_from_gradient_times_input():
    model = tiny_probe()
    images, targets = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, targets.view(-1, 1)).sum(), x)
    plain = ((images - model.backbone.mean) * grad).sum(dim=1)
    for rule in ("attnlrp", "cp"):
        with get("lrp", model, softmax_rule=rule, level="pixel") as explainer:
            lrp = explainer.attribute(images, targets)
        difference = (lrp - plain).flatten(1).norm(dim=1) / plain.flatten(1).norm(dim=1)
        assert (difference > 0.2).all(), (rule, difference)


def test_lrp_finds_the_planted_evidence():
    """Patch level (default): over half the [0, 1] map's mass inside the evidence square (chance 1/4).
    Pixel level: the evidence holds over half of the summed relevance (the explained share of the logit)."""
    model = planted_classifier()
    images, labels, masks = planted_images(32, seed=123)
    with get("lrp", model) as explainer:
        assert mass_inside(explainer(images, labels), masks).mean() > 0.5
    with get("lrp", model, level="pixel") as explainer:
        relevance = explainer.attribute(images, labels).flatten(1)
    inside = (relevance * masks.flatten(1)).sum(1) / relevance.sum(1)
    assert inside.mean() > 0.5


def test_model_randomisation_changes_the_maps():
    model = planted_classifier()
    images = planted_images(8, seed=7)[0]
    assert randomization_check("lrp", model, images, n_blocks=model.backbone.num_blocks) < 0.8


def test_options_are_validated():
    model = tiny_probe()
    with pytest.raises(VfmxaiError, match="softmax_rule"):
        get("lrp", model, softmax_rule="gamma")
    with pytest.raises(VfmxaiError, match="level"):
        get("lrp", model, level="token")


def test_identity_rule_gain_near_zero_is_the_activations_limit():
    """f(x)/x -> 1/2 as x -> 0 for GELU, QuickGELU and SiLU; the rule used to set it to 0 below |x| < 1e-6."""
    from transformers.activations import QuickGELUActivation

    from vfmxai.explainers.lrp import _identity_rule

    x = torch.tensor([0.0, 1e-8, -1e-7, 0.5, -2.0], dtype=torch.float64, requires_grad=True)
    for activation in (torch.nn.GELU(), QuickGELUActivation(), torch.nn.SiLU()):
        out = _identity_rule(activation, (x,), activation(x))
        (gain,) = torch.autograd.grad(out.sum(), x)
        torch.testing.assert_close(gain[:3], torch.full((3,), 0.5, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(gain[3:], (activation(x) / x).detach()[3:])


@pytest.mark.slow
def test_cp_rule_conserves_on_the_full_size_clip_b16():
    """The same budget on the full ViT-B/16 architecture (random weights, 224 px, float64): with every bias-like
    constant zeroed, the input relevance sums to the target logit (rtol 1e-8); in float32 the relevance agrees
    with the float64 one to 1e-3 relative per image."""
    from vfmxai.backbones import load_backbone
    from vfmxai.classifier import LinearProbe

    torch.manual_seed(0)
    model = LinearProbe(load_backbone("clip-vit-b16"), 3).double().eval()
    with torch.no_grad():
        for p in _bias_like(model):
            p.zero_()
        model.head.weight.mul_(50)  # logits well away from zero, so a relative check means something
    images, targets = torch.rand(1, 3, 224, 224, dtype=torch.float64), torch.tensor([1])
    with get("lrp", model, softmax_rule="cp") as explainer:
        relevance, logits = explainer.relevance(images, targets)
    assert logits.abs().min() > 1e-2
    torch.testing.assert_close(relevance.sum(dim=(1, 2, 3)), logits, rtol=1e-8, atol=1e-10)
    model32 = model.float()
    with get("lrp", model32, softmax_rule="cp") as explainer:
        relevance32, _ = explainer.relevance(images.float(), targets)
    torch.testing.assert_close(relevance32.sum(dim=(1, 2, 3)).double(), logits, rtol=1e-3, atol=1e-6)
