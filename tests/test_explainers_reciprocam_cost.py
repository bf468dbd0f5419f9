"""ViT-ReciproCAM's masked copies skip the blocks before the masked layer (`token_masks.blocks_on_rows`): the maps
equal those of the full recomputation, and the blocks before h^(layer) see one row per image of a pass."""

from __future__ import annotations

import pytest
import torch
from explainer_fixtures import tiny_probe
from run_fixtures import tiny_run_config
from torch import Tensor

from vfmxai.ala import build_model
from vfmxai.classifier import Classifier
from vfmxai.explainers import get
from vfmxai.explainers.base import index_chunks
from vfmxai.explainers.token_masks import gaussian_token_masks, recorded_states, replaced_state


def full_recomputation(classifier: Classifier, images: Tensor, targets: Tensor, layer: int, batch_size: int) -> Tensor:
    """The reference: every copy runs the whole network, h^(layer) replaced by the masked copy of the clean one."""
    backbone = classifier.backbone
    rows, cols = backbone.grid_shape(images.shape[-2:])
    n, prefix = rows * cols, backbone.num_prefix_tokens
    (state,) = recorded_states(classifier, images, [layer])
    weights = torch.cat([torch.ones(n, prefix), gaussian_token_masks(rows, cols, images.device)], dim=1)
    scores = torch.zeros(len(images), n)
    with torch.no_grad():
        for image, token in index_chunks(len(images), n, batch_size, images.device):
            masked = state[image] * weights[token].unsqueeze(-1)
            with replaced_state(backbone, layer, lambda _, masked=masked: masked):
                probs = classifier(images[image]).softmax(dim=-1)
            scores[image, token] = probs.gather(1, targets[image, None]).squeeze(1)
    return scores.view(-1, rows, cols)


def tiny_ala() -> Classifier:
    """The tiny run's ALA model (heads randomly initialised, so the copies' probabilities differ); it injects
    h^(0) and h^(1) of the 4-block backbone into its former."""
    config = tiny_run_config()
    config.model.num_classes = 4
    torch.manual_seed(0)
    return build_model(config).eval()


def images_and_targets(classifier: Classifier) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    return images, classifier(images).argmax(dim=1)


@pytest.mark.parametrize("model", ["probe", "ala"])
@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_maps_equal_the_full_recomputation(model, layer):
    """batch_size 12 over 3 images x 16 tokens: passes that hold copies of two images, and of one."""
    classifier = tiny_probe() if model == "probe" else tiny_ala()
    with torch.no_grad():
        images, targets = images_and_targets(classifier)
    with get("vit_reciprocam", classifier, layer=layer, batch_size=12) as explainer:
        maps = explainer.attribute(images, targets)
    reference = full_recomputation(classifier, images, targets, layer, batch_size=12)
    assert reference.std() > 1e-4  # the copies' scores differ, so the comparison can fail
    torch.testing.assert_close(maps, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model", ["probe", "ala"])
def test_blocks_before_the_layer_see_one_row_per_image_of_a_pass(model):
    """Rows through each block's attention: the clean pass (3 images) plus, per pass of copies, the images it holds
    (before the layer) or its copies (after it). 48 copies in passes of 20: images {0,1}, {1,2}, {2}."""
    classifier = tiny_probe() if model == "probe" else tiny_ala()
    with torch.no_grad():
        images, targets = images_and_targets(classifier)
    backbone, layer = classifier.backbone, 2
    seen = [0] * backbone.num_blocks

    def counter(j: int):
        def count(module, args, output):
            seen[j] += (output[0] if isinstance(output, tuple) else output).shape[0]
        return count

    handles = [backbone.attention(j).register_forward_hook(counter(j)) for j in range(backbone.num_blocks)]
    try:
        with get("vit_reciprocam", classifier, layer=layer, batch_size=20) as explainer:
            explainer.attribute(images, targets)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [3 + 2 + 2 + 1] * layer + [3 + 48] * (backbone.num_blocks - layer)
    assert all("forward" not in vars(block) for block in backbone.blocks)  # the wrapped forwards are restored
