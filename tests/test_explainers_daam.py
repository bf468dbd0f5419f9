"""DAAM: accumulation, the decomposition against transformers' own tensors, self-supervised mode, planted
evidence, randomisation."""

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
from transformers.models.clip.modeling_clip import eager_attention_forward

from vfmxai.errors import VfmxaiError
from vfmxai.explainers import get
from vfmxai.explainers.attention import swap_attention
from vfmxai.explainers.daam import DAAM, EmbeddingScore, embed, knn_prototypes


def test_accumulated_maps_are_running_sums_of_the_per_block_maps():
    model = tiny_probe()
    images, targets = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    with get("daam", model) as explainer:
        per_block, accumulated = explainer.explain_blocks(images, targets)
        final = explainer.attribute(images, targets)
    assert per_block.shape == accumulated.shape == (3, model.backbone.num_blocks, 4, 4)
    assert (per_block >= 0).all() and per_block.flatten(2).amax(-1).gt(0).any()
    for b in range(per_block.shape[1]):
        torch.testing.assert_close(accumulated[:, b], per_block[:, : b + 1].sum(dim=1))
    torch.testing.assert_close(final, per_block.sum(dim=1))


def test_per_block_maps_match_a_hand_decomposition_of_transformers_attention():
    """F[j, c] = A_h(c)[cls, j]·V[j, c] sums over j to the class token's out-projection input; the block's map
    is ReLU(Σ_c ReLU(∂y/∂o_cls[c])·F[j, c]) over the patch tokens."""
    model = tiny_probe()
    backbone = model.backbone
    images, targets = torch.rand(2, 3, 32, 32), torch.tensor([2, 1])
    with get("daam", model) as explainer:
        per_block, _ = explainer.explain_blocks(images, targets)
    values, outputs, handles = [], [], []
    for i in range(backbone.num_blocks):
        attention = backbone.attention(i)
        handles.append(attention.v_proj.register_forward_hook(lambda m, a, out: values.append(out)))
        handles.append(attention.out_proj.register_forward_pre_hook(lambda m, a: outputs.append(a[0])))
    try:
        with swap_attention(backbone, eager_attention_forward):
            out = backbone(images.clone().requires_grad_(True), output_attentions=True)
            logits = model.head(backbone.pooled(out.hidden_states[-1]))
            grads = torch.autograd.grad(logits.gather(1, targets.view(-1, 1)).sum(), outputs)
    finally:
        for handle in handles:
            handle.remove()
    heads = backbone.num_heads
    for b, (attn, value, output, grad) in enumerate(zip(out.attentions, values, outputs, grads, strict=True)):
        v = value.detach().view(2, 17, heads, -1)  # (B, T, heads, head_dim)
        features = (attn.detach()[:, :, 0, :].transpose(1, 2).unsqueeze(-1) * v).flatten(2)  # (B, T, D)
        torch.testing.assert_close(features.sum(dim=1), output.detach()[:, 0], rtol=1e-5, atol=1e-6)
        expected = (
            (features * grad[:, 0].clamp_min(0).unsqueeze(1)).sum(-1).clamp_min(0)[:, 1:].reshape(2, 4, 4)
        )
        torch.testing.assert_close(per_block[:, b], expected, rtol=1e-5, atol=1e-7)


def test_importance_weights_by_hand():
    embedding = torch.tensor([[1.0, 2.0, -3.0]])
    # own embedding as the prototype: f̂² ∝ (1, 4, 9) -> min-max (0, 3/8, 1)
    torch.testing.assert_close(EmbeddingScore(None).importance(embedding), torch.tensor([[0.0, 3 / 8, 1.0]]))
    # prototype (1, 0, 0): only the first dimension carries the similarity
    proto = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(
        EmbeddingScore(None, proto).importance(embedding), torch.tensor([[1.0, 0.0, 0.0]])
    )


def test_self_supervised_mode_explains_a_bare_backbone_and_ignores_the_head():
    model = tiny_probe()
    images = torch.rand(2, 3, 32, 32)
    with get("daam", model.backbone, mode="self_supervised") as bare:
        maps = bare(images)
        per_block, accumulated = bare.explain_blocks(images)
        with_targets = bare(images, torch.tensor([5, 7]))
    with get("daam", model, mode="self_supervised") as probe:
        via_probe = probe(images, torch.tensor([0, 1]))
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert accumulated[:, -1].flatten(1).amax(1).gt(0).all()
    torch.testing.assert_close(accumulated[:, -1], per_block.sum(1))
    torch.testing.assert_close(with_targets, maps)
    torch.testing.assert_close(via_probe, maps)
    with get("daam", model.backbone, mode="self_supervised", prototype=torch.randn(32)) as other:
        assert not torch.allclose(other(images), maps)


def test_options_are_validated():
    model = tiny_probe()
    with pytest.raises(VfmxaiError, match="mode"):
        DAAM(model, mode="unsupervised")
    with pytest.raises(VfmxaiError, match="self_supervised"):
        get("daam", model.backbone)
    with pytest.raises(VfmxaiError, match="prototype"):
        get("daam", model, prototype=torch.zeros(32))
    with pytest.raises(VfmxaiError, match="prototype"):
        get("daam", model, mode="self_supervised", prototype=torch.zeros(7))


def test_daam_finds_the_planted_evidence():
    """Mass of the [0, 1] map inside the evidence square (chance: its area, 1/4); "mostly" = over half."""
    model = planted_classifier()
    images, labels, masks = planted_images(32, seed=123)
    with get("daam", model) as explainer:
        assert mass_inside(explainer(images, labels), masks).mean() > 0.5


def test_model_randomisation_changes_the_maps():
    model = planted_classifier()
    images = planted_images(8, seed=7)[0]
    assert randomization_check("daam", model, images, n_blocks=model.backbone.num_blocks) < 0.8


def test_knn_prototype_by_hand():
    """Bank: class 0 around e1, class 1 around e2. A query near e1 with k = 3: its 3 nearest are two class-0
    entries and one class-1 entry, so it is class 0, and p = the mean of class 0's 3 nearest (it has 2 -> both)."""
    bank = torch.tensor([[1.0, 0.1, 0.0], [1.0, -0.1, 0.0], [0.2, 1.0, 0.0], [0.0, 1.0, 0.1], [0.0, 1.0, -0.1]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0]])
    p = knn_prototypes(query, bank, labels, k=3)
    unit = torch.nn.functional.normalize(bank, dim=-1)
    torch.testing.assert_close(p[0], unit[:2].mean(0))
    torch.testing.assert_close(p[1], unit[2:].mean(0))


def test_memory_bank_gives_each_image_its_knn_prototype():
    model = tiny_probe()
    torch.manual_seed(0)
    images, bank_images = torch.rand(2, 3, 32, 32), torch.rand(6, 3, 32, 32)
    bank = (embed(model.backbone, bank_images, batch_size=4), torch.tensor([0, 0, 0, 1, 1, 1]))
    prototype = knn_prototypes(embed(model.backbone, images), *bank, k=3)
    with get("daam", model.backbone, mode="self_supervised", memory_bank=bank, k=3) as knn:
        via_bank = knn(images)
    with get("daam", model.backbone, mode="self_supervised", prototype=prototype) as direct:
        torch.testing.assert_close(via_bank, direct(images))
    with pytest.raises(VfmxaiError, match="not both"):
        get("daam", model.backbone, mode="self_supervised", memory_bank=bank, prototype=prototype)
    with pytest.raises(VfmxaiError, match="memory_bank must be"):
        get("daam", model.backbone, mode="self_supervised", memory_bank=(bank[0], bank[1][:3]))
