"""The second synthetic family (scripts/make_shift_set.py), used only for evaluation."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vfmxai.data import FolderDataset, check_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_shift_set.py"


@pytest.fixture(scope="module")
def shift():
    spec = importlib.util.spec_from_file_location("make_shift_set", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_images_are_a_function_of_their_arguments_and_objects_are_small(shift):
    a_img, a_mask, a_label = shift.render(0, "test", 5)
    b_img, b_mask, b_label = shift.render(0, "test", 5)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask) and a_label == b_label == 5 % 4
    assert not np.array_equal(a_img, shift.render(1, "test", 5)[0])
    low, high = shift.AREA_RANGE
    shares = [shift.render(0, "train", i)[1].mean() for i in range(12)]
    assert all(0.7 * low <= s <= 1.3 * high for s in shares), shares


def test_written_set_loads_and_checks_clean_and_is_not_overwritten(shift, tmp_path):
    out = tmp_path / "shift"
    assert shift.main(["--out", str(out), "--size", "48", "--n-train", "8", "--n-val", "4", "--n-test", "4"]) == 0
    assert check_dataset("folder", out) == []
    test = FolderDataset(out, "test", 48)
    assert len(test) == 4 and test.class_names == list(shift.CLASSES)
    sample = test[1]
    _, mask, label = shift.render(0, "test", 1, 48)
    assert int(sample["label"]) == label and np.array_equal(sample["mask"].numpy(), mask)
    with pytest.raises(SystemExit, match="not an empty folder"):
        shift.main(["--out", str(out), "--n-train", "1"])
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(SystemExit, match="not an empty folder"):
        shift.main(["--out", str(tmp_path / "a_file")])
    assert (tmp_path / "a_file").read_text() == "mine"
