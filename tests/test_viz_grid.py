"""Method grids and insertion/deletion curve figures: pixel sizes and pixel values by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from vfmxai.errors import VfmxaiError
from vfmxai.evaluation.report import source_line
from vfmxai.viz import grid_size, method_grid, save_grid, save_insdel_curves
from vfmxai.viz.grid import FOOTER

COLOUR = torch.tensor([0.2, 0.4, 0.6])


def test_grid_size_and_tiles(tmp_path: Path) -> None:
    images = COLOUR.view(1, 3, 1, 1).expand(3, 3, 16, 16).clone()
    zeros, ones = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)
    assert grid_size(3, 3, tile=40, pad=4, header=16) == (16 + 3 * 40 + 4 * 4, 3 * 40 + 4 * 4)

    canvas = method_grid(images, [("zeros", zeros), ("ones", ones)], tile=40, pad=4, header=16)
    assert canvas.shape == (152, 136, 3) and canvas.dtype == np.uint8
    centre_y = 16 + 4 + 2 * (40 + 4) + 20  # third row
    column_x = [4 + c * (40 + 4) + 20 for c in range(3)]
    picture = COLOUR.numpy()
    np.testing.assert_array_equal(canvas[centre_y, column_x[0]], np.round(picture * 255))
    for x, value in zip(column_x[1:], (0.0, 1.0), strict=True):
        expected = np.round((0.5 * picture + 0.5 * np.asarray(colormaps["jet"](value)[:3])) * 255)
        np.testing.assert_allclose(canvas[centre_y, x], expected, atol=1)
    assert (canvas[16 + 1, :] == 255).all()  # the padding band under the header is white

    save_grid(images, [("zeros", zeros)], tmp_path / "g.png", tile=40, pad=4, header=16)
    with Image.open(tmp_path / "g.png") as saved:
        assert saved.size == (2 * 40 + 3 * 4, 152)


def test_a_caption_adds_a_footer_band_with_its_text_and_nothing_else_moves() -> None:
    images = COLOUR.view(1, 3, 1, 1).expand(2, 3, 16, 16).clone()
    columns = [("ones", torch.ones(2, 8, 8))]
    plain = method_grid(images, columns, tile=40, pad=4, header=16)
    captioned = method_grid(images, columns, tile=40, pad=4, header=16, caption="dinov2-small + ala, assets/pets test")
    assert grid_size(2, 2, tile=40, pad=4, header=16, footer=FOOTER) == captioned.shape[:2]
    assert captioned.shape[0] == plain.shape[0] + FOOTER
    np.testing.assert_array_equal(captioned[: plain.shape[0]], plain)
    footer = captioned[plain.shape[0] :]
    assert (footer < 200).any() and (footer[:, -4:] == 255).all()  # text drawn, cut before the right border


def test_source_line_names_the_backbone_the_classifier_and_the_data() -> None:
    metrics = {
        "config": {"run": {"backbone": {"name": "/x/assets/dinov2-small"}, "classifier": "linear_probe",
                           "data": {"root": "/x/assets/pets"}}},
        "dataset": "folder", "split": "test", "n_images": 34,
    }
    assert source_line(metrics) == "dinov2-small + linear_probe, assets/pets test: 34 images"
    metrics["config"]["run"]["data"]["root"] = None
    assert source_line(metrics) == "dinov2-small + linear_probe, folder test: 34 images"


def test_grid_rejects_maps_of_other_rows() -> None:
    with pytest.raises(VfmxaiError, match="column 'm'"):
        method_grid(torch.zeros(2, 3, 8, 8), [("m", torch.zeros(3, 8, 8))])


def test_curves_png_size_and_errors(tmp_path: Path) -> None:
    ramp = np.linspace(0, 1, 11)
    save_insdel_curves({"a": (ramp, 1 - ramp), "b": (ramp**2, (1 - ramp) ** 2)}, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as image:
        assert image.size == (1000, 400)
    with pytest.raises(VfmxaiError, match="deletion curve of 'a'"):
        save_insdel_curves({"a": (ramp, np.zeros(1))}, tmp_path / "d.png")
    with pytest.raises(VfmxaiError, match="no method"):
        save_insdel_curves({}, tmp_path / "e.png")
