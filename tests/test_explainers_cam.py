"""Grad-CAM and Score-CAM on the tiny ViT: known answers, hand-computed formulas, planted evidence, hooks."""

import pytest
import torch
import torch.nn.functional as F
from explainer_fixtures import (
    evidence_auc,
    hook_snapshot,
    planted_classifier,
    planted_images,
    randomization_check,
    tiny_probe,
)
from torch import nn

import vfmxai.explainers.cam  # noqa: F401  (registers gradcam, scorecam)
from vfmxai.backbones import load_backbone
from vfmxai.classifier import Classifier
from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get
from vfmxai.maps import normalize_maps

TOKEN = 6  # row 1, column 2 of the 4x4 patch grid: a transposed grid would put it at (2, 1)


class OneTokenHead(Classifier):
    """logits = V^T h^(k)[patch token TOKEN]: only that token of h^(k) can move the score."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.backbone = load_backbone("tiny")
        self.num_classes = weight.shape[1]
        self.register_buffer("weight", weight)

    def forward(self, images):
        last = self.backbone(images).hidden_states[-1]
        return last[:, 1 + TOKEN] @ self.weight


def _images(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_gradcam_known_answer_one_token_head():
    x = torch.full((1, 3, 32, 32), 0.5)
    x[:, :, 8:16, 16:24] = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # patch TOKEN: the only one unlike the rest
    backbone = load_backbone("tiny")
    with torch.no_grad():
        tokens = backbone.hidden_states(x)[-1][0, 1:]  # (16, D) patch tokens of h^(k)
    lead = tokens[TOKEN] - torch.cat([tokens[:TOKEN], tokens[TOKEN + 1 :]]).amax(dim=0)
    channel = int(lead.argmax())
    assert lead[channel] > 0 and tokens[TOKEN, channel] > 0  # some channel peaks at TOKEN
    weight = torch.zeros(tokens.shape[1], 2)
    weight[channel, 1] = 1.0
    model = OneTokenHead(weight).eval()
    with get("gradcam", model) as explainer:
        cam = explainer.attribute(x, torch.tensor([1]))
        assert explainer.last_layer == model.backbone.num_blocks  # h^(k): its patch tokens reach the score
    assert cam.shape == (1, 4, 4)
    assert int(cam.flatten().argmax()) == TOKEN
    # by hand: dS/dA is V[:, 1] at TOKEN and 0 elsewhere, so w = V[:, 1] / N and CAM_i = ReLU(A_i . w)
    torch.testing.assert_close(cam.flatten(), F.relu(tokens[:, channel] / 16), rtol=1e-4, atol=1e-6)


def test_gradcam_matches_formula_at_a_chosen_layer():
    model, x, t = tiny_probe(num_classes=3), _images(2), torch.tensor([2, 0])
    pixels = x.clone().requires_grad_()
    states = model.backbone.hidden_states(pixels)
    logits = model.head(model.backbone.pooled(states[-1]))
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), states[2])
    acts, grad = states[2][:, 1:].detach(), grad[:, 1:]
    expected = F.relu((acts * grad.mean(dim=1, keepdim=True)).sum(-1)).view(2, 4, 4)
    with get("gradcam", model, layer=2) as explainer:
        torch.testing.assert_close(explainer.attribute(x, t), expected, rtol=1e-4, atol=1e-7)


def test_gradcam_default_layer_on_a_class_token_head():
    model, x = tiny_probe(), _images(2)
    with get("gradcam", model) as explainer:
        explainer(x)
        # a LinearProbe reads h^(k)'s class token only: its patch tokens get no gradient, h^(k-1)'s do
        assert explainer.last_layer == model.backbone.num_blocks - 1
    with pytest.raises(VfmxaiError, match="no gradient"), get("gradcam", model, layer=-1) as explainer:
        explainer(x)


def test_scorecam_matches_formula():
    model, x, t = tiny_probe(num_classes=3), _images(2, seed=4), torch.tensor([1, 2])
    k = 5
    with torch.no_grad():
        acts = model.backbone.patch_grid(model.backbone.hidden_states(x)[-1])  # (B, D, 4, 4)

        def prob(images, target):
            return model(images).softmax(dim=1)[:, target]

        expected = []
        for b in range(2):
            channels = acts[b].flatten(1).var(dim=1).topk(k).indices
            maps = acts[b, channels]
            masks = normalize_maps(F.interpolate(maps[:, None], size=(32, 32), mode="bilinear").squeeze(1))
            weights = prob(x[b] * masks[:, None], t[b]) - prob(torch.zeros_like(x[b : b + 1]), t[b])
            expected.append(F.relu((weights[:, None, None] * maps).sum(0)))
    with get("scorecam", model, max_channels=k, batch_size=3) as explainer:
        torch.testing.assert_close(explainer.attribute(x, t), torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_scorecam_batch_size_does_not_change_the_map():
    model, x, t = tiny_probe(num_classes=3), _images(2, seed=5), torch.tensor([0, 1])
    whole = get("scorecam", model, batch_size=1000).attribute(x, t)
    torch.testing.assert_close(get("scorecam", model, batch_size=7).attribute(x, t), whole)


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_hooks_released(method):
    model, x = tiny_probe(), _images(2)
    model(x)  # transformers installs its own output-recording hooks on the first forward
    before = hook_snapshot(model)
    with get(method, model) as explainer:
        assert hook_snapshot(model) != before
        explainer(x)
    assert hook_snapshot(model) == before


def test_bad_input_and_options():
    model = tiny_probe()
    with pytest.raises(VfmxaiError, match="target out of range"):
        get("gradcam", model)(_images(2), torch.tensor([0, 3]))
    with pytest.raises(VfmxaiError, match=r"\(B, 3, H, W\)"):
        get("scorecam", model)(torch.rand(2, 1, 32, 32))
    with pytest.raises(VfmxaiError, match="layer=7"):
        get("gradcam", model, layer=7)
    with pytest.raises(VfmxaiError, match="max_channels"):
        get("scorecam", model, max_channels=0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    mlp.num_classes = 2
    with pytest.raises(VfmxaiError, match="ViT backbone"):
        get("gradcam", mlp)


# Grad-CAM is scored on the head it is defined for (a linear head on pooled feature maps, as the ALA
# perception branch); on the class-token probe it passes with this seed but not with every training seed.
@pytest.mark.parametrize("method,head", [("gradcam", "patch_mean"), ("scorecam", "class_token")])
def test_planted_evidence(method, head):
    model = planted_classifier(head=head)
    x, y, masks = planted_images(8, seed=777)
    with get(method, model) as explainer:
        auc = evidence_auc(explainer(x, y), masks)
    assert auc.mean() > 0.75, auc


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_model_randomization_changes_maps(method):
    x, _, _ = planted_images(8, seed=777)
    rho = randomization_check(method, planted_classifier(), x, n_blocks=4)
    print(f"randomization {method}: spearman {rho:.3f}")
    assert rho < 0.8
