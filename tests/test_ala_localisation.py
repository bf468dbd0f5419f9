"""The ALA map follows the object: shift the object inside the image and the map's mass moves with it."""

import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai.data import SyntheticDataset
from vfmxai.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ALA on the shipped default backbone, 4 epochs on 240 synthetic images (about half a minute)."""
    config = tiny_run_config(epochs=4, batch_size=32, lr=1e-3)
    config.backbone.name, config.backbone.image_size, config.backbone.lora_rank = "default", 64, 8
    m = config.model
    m.patch_size, m.dim, m.depth, m.heads, m.n_inject, m.map_channels, m.pb_channels = 8, 32, 2, 2, 2, 32, 64
    config.data.n_train, config.data.n_val, config.data.synth_size = 240, 32, 64
    return train(config, tmp_path_factory.mktemp("loc") / "run", progress=False)


def _centroid(weights: torch.Tensor) -> torch.Tensor:
    """(B, H, W) non-negative weights -> (B, 2) weighted (row, column) centre."""
    h, w = weights.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    total = weights.sum(dim=(1, 2)).clamp_min(1e-8)
    return torch.stack([(weights * rows).sum(dim=(1, 2)) / total, (weights * cols).sum(dim=(1, 2)) / total], 1)


def test_the_map_moves_with_the_object(trained):
    images, masks, _ = SyntheticDataset("test", 48, 64, seed=7).tensors()
    shift = 12
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    last_row = torch.where(rows, torch.arange(64), -1).max(1).values
    last_col = torch.where(cols, torch.arange(64), -1).max(1).values
    fits = (last_row + shift < 64) & (last_col + shift < 64)
    images, masks = images[fits], masks[fits]
    assert len(images) >= 8
    moved = torch.roll(images, shifts=(shift, shift), dims=(2, 3))
    with torch.no_grad():
        before, _ = trained.explain(images)
        after, _ = trained.explain(moved)
    # mass above each map's median, so a uniform floor does not pull the centre to the middle
    weigh = lambda maps: (maps - maps.flatten(1).median(1).values.view(-1, 1, 1)).clamp_min(0)  # noqa: E731
    displacement = _centroid(weigh(after)) - _centroid(weigh(before))
    mean_shift = displacement.mean(0)
    assert torch.allclose(mean_shift, torch.tensor([float(shift)] * 2), atol=4.0), mean_shift
    object_shift = _centroid(torch.roll(masks, (shift, shift), (1, 2)).float()) - _centroid(masks.float())
    torch.testing.assert_close(object_shift, torch.full_like(object_shift, float(shift)))
