"""`vfmxai explain` on awkward image sizes: smaller than a patch, and large and non-square (the memory-light
path), always answered at the file's own size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vfmxai.cli import main
from vfmxai.data import load_image
from vfmxai.explain import PREFILTER, model_input
from vfmxai.viz.overlay import overlay


@pytest.fixture
def run_dir(trained_run):
    return trained_run


def _explain(run_dir, image_path, out) -> int:
    return main(["explain", "--checkpoint", str(run_dir), "--method", "ala,gradcam", "--out", str(out),
                 str(image_path)])


def test_an_image_smaller_than_a_patch_is_upsampled_and_answered_at_its_size(run_dir, tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (5, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "tiny.png")
    assert _explain(run_dir, tmp_path / "tiny.png", tmp_path / "out") == 0
    for method in ("ala", "gradcam"):
        raw = np.load(tmp_path / "out" / f"tiny.{method}.npy")
        assert raw.shape == (5, 5) and raw.dtype == np.float32 and np.isfinite(raw).all()
        assert 0 <= raw.min() and raw.max() <= 1
        assert Image.open(tmp_path / "out" / f"tiny.{method}.png").size == (5, 5)


def test_a_large_non_square_image_keeps_its_size_and_its_overlay(run_dir, tmp_path):
    """300 x 700 px for a 32 px model: above PREFILTER x 32 = 256 px, so the image is area-averaged before
    the float resize, and the overlay is drawn in blocks of rows; neither may show in the outputs."""
    height, width = 300, 700
    rng = np.random.default_rng(2)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 14, 3), dtype=np.uint8)).resize((width, height))
    noisy = np.clip(np.asarray(coarse, dtype=np.int16) + rng.integers(-20, 21, (height, width, 3)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "wide.png")
    assert _explain(run_dir, tmp_path / "wide.png", tmp_path / "out") == 0

    image = load_image(tmp_path / "wide.png")
    for method in ("ala", "gradcam"):
        raw = np.load(tmp_path / "out" / f"wide.{method}.npy")
        assert raw.shape == (height, width) and 0 <= raw.min() and raw.max() <= 1
        drawn = np.asarray(Image.open(tmp_path / "out" / f"wide.{method}.png"))
        assert drawn.shape == (height, width, 3)
        np.testing.assert_array_equal(drawn, overlay(image, torch.from_numpy(raw)))

    assert max(height, width) > PREFILTER * 32
    direct = F.interpolate(image[None], size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]
    fast = model_input(Image.open(tmp_path / "wide.png").convert("RGB"), 32)
    assert fast.shape == (3, 32, 32)
    assert float((fast - direct).abs().max()) < 0.01 and float((fast - direct).abs().mean()) < 0.003
