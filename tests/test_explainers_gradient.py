"""Integrated Gradients and Guided Backprop: captum agreement, completeness, the guided rule, planted evidence."""

import pytest
import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import IntegratedGradients as CaptumIG
from explainer_fixtures import (
    evidence_auc,
    hook_snapshot,
    planted_classifier,
    planted_images,
    randomization_check,
    tiny_probe,
)
from scipy import ndimage
from torch import nn
from transformers.activations import QuickGELUActivation

import vfmxai.explainers.gradient  # noqa: F401  (registers ig, guided_bp)
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get
from vfmxai.metrics import gaussian_blur


class ReluCNN(nn.Module):
    """A small ReLU CNN on 8x8 images: a model where captum's methods apply as they are."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(), nn.Flatten()
        )
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(self.body(x))


class QuickGeluMLP(nn.Module):
    """logits = W2 QuickGELU(W1 vec(x) + b1) + b2; the guided gradient is computable by hand."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1 = nn.Linear(12, 16)
        self.act = QuickGELUActivation()
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


def _images(n=4, size=8, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_ig_matches_captum(method):
    model, x, t = ReluCNN().eval(), _images(), torch.tensor([0, 1, 2, 1])
    steps = 20
    ours = get("ig", model, steps=steps, method=method, internal_batch_size=7).attribute_pixels(x, t)
    theirs = CaptumIG(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=steps, method=method)
    # captum's trapezoid weights are 1/n (end points halved) and sum to (n-1)/n; ours are 1/(n-1) and sum to 1.
    scale = (steps - 1) / steps if method == "riemann_trapezoid" else 1.0
    torch.testing.assert_close(ours * scale, theirs.float(), rtol=1e-4, atol=1e-6)


def test_guided_bp_matches_captum_on_relu():
    model, x, t = ReluCNN().eval(), _images(), torch.tensor([2, 0, 1, 1])
    with get("guided_bp", model) as explainer:
        ours = explainer.attribute_pixels(x, t)
    theirs = CaptumGuidedBackprop(model).attribute(x, target=t)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    pixels = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(model(pixels).gather(1, t[:, None]).sum(), pixels)
    assert not torch.allclose(ours, plain)


def test_guided_rule_by_hand_on_quickgelu():
    model, x, t = QuickGeluMLP().eval(), _images(3, size=2), torch.tensor([0, 1, 1])
    with get("guided_bp", model) as explainer:
        ours = explainer.attribute_pixels(x, t)
    z = model.fc1(x.flatten(1)).detach()
    sig = torch.sigmoid(1.702 * z)
    slope = sig * (1 + 1.702 * z * (1 - sig))  # d/dz [z * sigmoid(1.702 z)]
    upstream = model.fc2.weight[t].clamp_min(0)  # d logit_t / d activation, positive part
    expected = (slope * upstream * (z > 0)) @ model.fc1.weight
    torch.testing.assert_close(ours.flatten(1), expected, rtol=1e-5, atol=1e-7)


def test_guided_bp_differs_from_plain_gradient_on_tiny_clip():
    model = tiny_probe(num_classes=3)
    x, t = _images(2, size=32), torch.tensor([0, 2])
    with get("guided_bp", model) as explainer:
        assert len(explainer.gated) == model.backbone.num_blocks  # one QuickGELU per MLP
        guided = explainer.attribute_pixels(x, t)
    pixels = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(model(pixels).gather(1, t[:, None]).sum(), pixels)
    assert (guided - plain).norm() > 0.1 * plain.norm()


@pytest.mark.parametrize("baseline", ["black", "blur", "mean"])
def test_ig_completeness(baseline):
    model = tiny_probe(num_classes=3)
    x, t = _images(2, size=32, seed=3), torch.tensor([1, 2])
    explainer = get("ig", model, steps=32, baseline=baseline)
    attributions = explainer.attribute_pixels(x, t)
    with torch.no_grad():
        gap = (model(x) - model(explainer.baseline_images(x))).gather(1, t[:, None]).squeeze(1)
    total = attributions.sum(dim=(1, 2, 3))
    assert ((total - gap).abs() <= 0.02 * gap.abs()).all(), (total, gap)


def test_ig_batching_does_not_change_attributions():
    model, x, t = ReluCNN().eval(), _images(3), torch.tensor([0, 1, 2])
    whole = get("ig", model, steps=8, internal_batch_size=1000).attribute_pixels(x, t)
    chunked = get("ig", model, steps=8, internal_batch_size=5).attribute_pixels(x, t)
    alone = get("ig", model, steps=8).attribute_pixels(x[1:2], t[1:2])
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(alone, whole[1:2])


def test_ig_baselines():
    x = _images(2, size=16)
    explainer = get("ig", ReluCNN(), baseline="mean")
    torch.testing.assert_close(explainer.baseline_images(x)[:, :, 3, 5], x.mean(dim=(2, 3)))
    blurred = get("ig", ReluCNN(), baseline="blur", blur_sigma=2.0).baseline_images(x)
    torch.testing.assert_close(blurred, gaussian_blur(x, 2.0, border="reflect"))
    assert blurred.shape == x.shape
    torch.testing.assert_close(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.03, rtol=0)
    assert blurred.std() < x.std()
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0, border="reflect"), flat)


def test_reflect_blur_is_scipys_mirror_blur_with_the_radius_clipped_to_the_image():
    x = torch.rand(1, 3, 21, 17, generator=torch.Generator().manual_seed(4))
    small = x[:, :, :5, :5]  # radius ceil(3 * 2) = 6 clipped to 4: scipy's kernel truncated at 4 = 2 sigma
    for images, truncate in ((x, 3.0), (small, 2.0)):
        reference = ndimage.gaussian_filter(images.double().numpy(), (0, 0, 2, 2), mode="mirror", truncate=truncate)
        blurred = gaussian_blur(images, 2.0, border="reflect").double()
        torch.testing.assert_close(blurred, torch.from_numpy(reference), atol=1e-6, rtol=0)


def test_map_reduction_sign():
    model, x, t = ReluCNN().eval(), _images(), torch.tensor([0, 1, 2, 1])
    raw = get("ig", model, steps=8).attribute_pixels(x, t).sum(dim=1)
    torch.testing.assert_close(get("ig", model, steps=8).attribute(x, t), raw.abs())
    torch.testing.assert_close(get("ig", model, steps=8, sign="positive").attribute(x, t), raw.clamp_min(0))


def test_guided_bp_releases_hooks_and_keeps_modules():
    model = tiny_probe()
    x = _images(2, size=32)
    model(x)  # transformers installs its own output-recording hooks on the first forward
    before = hook_snapshot(model)
    activations = [block.mlp.activation_fn for block in model.backbone.blocks]
    with get("guided_bp", model) as explainer:
        assert hook_snapshot(model) != before
        explainer(x)
    assert hook_snapshot(model) == before
    assert [block.mlp.activation_fn for block in model.backbone.blocks] == activations
    assert all(type(a) is QuickGELUActivation for a in activations)


def test_bad_input_and_options():
    model = ReluCNN()
    with pytest.raises(VfmxaiError, match="target out of range"):
        get("ig", model)(_images(2), torch.tensor([0, 3]))
    with pytest.raises(VfmxaiError, match=r"\(B, 3, H, W\)"):
        get("guided_bp", model)(torch.rand(2, 8, 8))
    with pytest.raises(VfmxaiError, match="baseline"):
        get("ig", model, baseline="white")
    with pytest.raises(VfmxaiError, match="sign"):
        get("guided_bp", model, sign="negative")


@pytest.mark.parametrize("method,options", [("ig", {"steps": 16}), ("guided_bp", {})])
def test_planted_evidence(method, options):
    model = planted_classifier()
    x, y, masks = planted_images(8, seed=777)
    with get(method, model, **options) as explainer:
        auc = evidence_auc(explainer(x, y), masks)
    assert auc.mean() > 0.75, auc


@pytest.mark.parametrize("method,options", [("ig", {"steps": 16}), ("guided_bp", {})])
def test_model_randomization_changes_maps(method, options):
    x, _, _ = planted_images(8, seed=777)
    rho = randomization_check(method, planted_classifier(), x, n_blocks=4, **options)
    print(f"randomization {method}: spearman {rho:.3f}")
    assert rho < 0.8
