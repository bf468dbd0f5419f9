"""The ALA map finds the object, and follows it: its maximum lands on the object in most test images
(pointing game), and when the image content is shifted (object kept inside) the map moves with it.

`torch.roll` moves background and distractors too, so this shows the map is tied to the image content,
not to a fixed place; that it is the object's place is what the pointing game measures. On the demo's model
(the last epoch's weights) the map's centre moves 5.9 px of the object's 12 (it moved 60 % when the toy
preset kept the epoch of lowest validation loss): it follows the object with a pull towards a fixed prior."""

import pytest
import torch

from vfmxai.ala.monitor import localisation_statistics
from vfmxai.config import preset
from vfmxai.data import SyntheticDataset
from vfmxai.training import train

pytestmark = pytest.mark.slow  # trains ALA on the demo's set: over a minute on a CPU

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ALA as the demo trains it (toy preset, shipped backbone, 360 synthetic images, 6 epochs; ~40 s)."""
    config = preset("toy")
    config.data.n_train, config.data.n_val = 360, 40
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
    centre_before, centre_after = _centroid(weigh(before)), _centroid(weigh(after))
    along = (centre_after - centre_before).mean(1)  # displacement along the object's (1, 1) direction
    assert along.mean() > shift / 3, along
    object_before = _centroid(masks.float())
    object_after = _centroid(torch.roll(masks, (shift, shift), (1, 2)).float())
    torch.testing.assert_close(object_after - object_before, torch.full_like(object_before, float(shift)))
    closer = (centre_after - object_after).norm(dim=1) < (centre_after - object_before).norm(dim=1)
    assert closer.float().mean() >= 0.75, closer


def test_the_maps_maximum_lands_on_the_object(trained):
    """Pointing game on 64 unseen test images well above its chance level (the objects' mean share of the
    image, about 0.2): a map that lit the border or the background would score near 0, a map blind to the
    image near the chance level."""
    images, masks, _ = SyntheticDataset("test", 64, 64, seed=0).tensors()
    with torch.no_grad():
        maps, _ = trained.explain(images)
    stats = localisation_statistics(maps, masks)
    chance = float(stats["mask_share"].mean())
    assert chance < 0.3
    assert float(stats["pg"].mean()) >= max(0.6, 2 * chance), stats["pg"].mean()
