"""Image/mask decoding, resizing, batched augmentation and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from vfmxai.data import SyntheticDataset, augment, collate, load_image, load_mask, resize_image, resize_mask
from vfmxai.errors import VfmxaiError


def test_grayscale_palette_and_16bit_become_rgb(tmp_path):
    gray = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    assert torch.allclose(out, torch.from_numpy(gray / 255.0).float().expand(3, 2, 2))

    pal = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert torch.allclose(out[:, 0, 1] * 255, torch.tensor([200.0, 100.0, 0.0]))
    assert torch.allclose(out[:, 0, 0] * 255, torch.tensor([10.0, 20.0, 30.0]))

    wide = np.array([[0, 65535, 32768]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    out = load_image(tmp_path / "w.png")
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 1.0, 32768 / 65535]), atol=1e-6)
    assert torch.equal(out[0], out[2])


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert torch.allclose(out[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out[:, 0, 1], torch.ones(3))
    assert torch.allclose(out[:, 0, 2], torch.full((3,), 1 - 128 / 255), atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :10] = 255  # left half white
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (3, 20, 10)
    assert out[:, :9].mean() > 0.9 and out[:, 11:].mean() < 0.1  # the left half went to the top


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_unreadable_files_raise_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:400])
    else:
        path.write_bytes(content)
    with pytest.raises(VfmxaiError, match="bad.png: not a readable image") as err:
        load_image(path)
    assert "\n" not in str(err.value)
    with pytest.raises(VfmxaiError, match="missing.png: file not found"):
        load_image(tmp_path / "missing.png")


def test_masks_threshold_by_value_channel_or_palette_index(tmp_path):
    Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8)).save(tmp_path / "soft.png")
    assert load_mask(tmp_path / "soft.png", threshold=128).tolist() == [[False, False, True, True]]
    assert load_mask(tmp_path / "soft.png").tolist() == [[False, True, True, True]]
    rgb = np.zeros((1, 3, 3), dtype=np.uint8)
    rgb[0, 1, 2] = 9
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert load_mask(tmp_path / "rgb.png").tolist() == [[False, True, False]]
    pal = Image.fromarray(np.array([[0, 1, 0]], dtype=np.uint8), "P")
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 drawn white: the index counts, not the colour
    pal.save(tmp_path / "pal.png")
    assert load_mask(tmp_path / "pal.png").tolist() == [[False, True, False]]


def test_resize_image_and_mask():
    image = torch.rand(3, 12, 20)
    out = resize_image(image, 8)
    assert out.shape == (3, 8, 8) and 0 <= float(out.min()) and float(out.max()) <= 1
    const = torch.full((3, 12, 20), 0.25)
    assert torch.allclose(resize_image(const, 7), torch.full((3, 7, 7), 0.25))
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, 2:] = True
    assert torch.equal(resize_mask(mask, 8), mask.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert resize_mask(mask, 8).dtype == torch.bool


def _ramps(b: int, size: int) -> torch.Tensor:
    """Channel 0 = x coordinate, channel 1 = y coordinate of pixel centres in (-1, 1)."""
    c = (torch.arange(size) + 0.5) / size * 2 - 1
    x = c.view(1, -1).expand(size, size)
    return torch.stack([x, x.t(), torch.zeros(size, size)]).expand(b, 3, size, size).clone()


def test_augment_identity_flip_and_crop():
    images = _ramps(64, 16)
    assert torch.equal(augment(images, torch.Generator().manual_seed(0), flip=False, crop_scale=1.0), images)

    flipped = augment(images, torch.Generator().manual_seed(0), flip=True, crop_scale=1.0)
    is_flip = torch.tensor([torch.allclose(o, i.flip(-1), atol=1e-6) for o, i in zip(flipped, images, strict=True)])
    is_same = torch.tensor([torch.allclose(o, i, atol=1e-6) for o, i in zip(flipped, images, strict=True)])
    assert bool((is_flip ^ is_same).all()) and 10 < int(is_flip.sum()) < 54

    s = 0.75
    out = augment(images, torch.Generator().manual_seed(1), flip=False, crop_scale=s)
    # a linear ramp stays linear: the crop shows s of the original range, at an offset within the image
    # (inner columns only: the outermost half pixel is sampled with border clamping)
    span_x = out[:, 0, :, -2] - out[:, 0, :, 1]
    span_y = out[:, 1, -2, :] - out[:, 1, 1, :]
    full = images[0, 0, 0, -2] - images[0, 0, 0, 1]
    assert torch.allclose(span_x, s * full, atol=1e-5) and torch.allclose(span_y, s * full, atol=1e-5)
    assert float(out[:, :2].abs().max()) <= 1.0
    offsets = out[:, 0, 0].mean(-1)
    assert float(offsets.abs().max()) <= 1 - s + 1e-6 and float(offsets.std()) > 0.05  # crops differ per image

    again = augment(images, torch.Generator().manual_seed(1), flip=False, crop_scale=s)
    assert torch.equal(out, again)
    with pytest.raises(VfmxaiError, match="crop_scale"):
        augment(images, crop_scale=0.0)


def test_collate_and_default_collate_agree():
    ds = SyntheticDataset("val", 5, size=32)
    batch = next(iter(DataLoader(ds, batch_size=5)))
    mine = collate([ds[i] for i in range(5)])
    assert set(batch) == set(mine) == {"image", "mask", "label", "id", "has_mask"}
    for key in ("image", "mask", "label", "has_mask"):
        assert torch.equal(batch[key], mine[key]) and batch[key].dtype == mine[key].dtype
    assert batch["id"] == mine["id"] == [f"val-{i:05d}" for i in range(5)]
    assert mine["image"].shape == (5, 3, 32, 32) and mine["mask"].dtype == torch.bool
    assert mine["label"].dtype == torch.long
    assert default_collate([ds[0]])["label"].tolist() == [0]
