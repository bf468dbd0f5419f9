"""Oxford-IIIT Pet in its official layout, on a small tree written here in that format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfmxai.cli import main
from vfmxai.config import preset, set_field
from vfmxai.data import check_dataset, dataset_info, get_dataset
from vfmxai.data.cub import VAL_SHARE
from vfmxai.errors import VfmxaiError

BREEDS = {1: "Abyssinian", 2: "american_bulldog", 3: "Bengal"}
"""Class id -> breed, as the official lists spell them (cats capitalised, dogs not)."""
SIDE = 16


def _trimap(seed: int) -> np.ndarray:
    """Background 2, a pet rectangle of 1 placed by `seed`, ringed by a one-pixel boundary band of 3."""
    rng = np.random.default_rng(seed)
    top, left = rng.integers(1, 6, size=2)
    trimap = np.full((SIDE, SIDE), 2, dtype=np.uint8)
    trimap[top - 1 : top + 9, left - 1 : left + 9] = 3
    trimap[top : top + 8, left : left + 8] = 1
    return trimap


def _pet_tree(root: Path, per_breed: tuple[int, int] = (6, 2)) -> Path:
    """images/, annotations/{trainval,test}.txt and annotations/trimaps/ for three breeds."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    lists = {"trainval": ["#Image CLASS-ID SPECIES BREED ID"], "test": []}
    seed = 0
    for class_id, breed in BREEDS.items():
        species = 1 if breed[0].isupper() else 2
        for part, count in zip(("trainval", "test"), per_breed, strict=True):
            for _ in range(count):
                seed += 1
                name = f"{breed}_{seed}"
                pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "images" / f"{name}.jpg")
                Image.fromarray(_trimap(seed)).save(root / "annotations" / "trimaps" / f"{name}.png")
                lists[part].append(f"{name} {class_id} {species} {class_id}")
    for part, lines in lists.items():
        (root / "annotations" / f"{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def _ids(dataset) -> list[str]:
    return [r.id for r in dataset.records]


def test_official_test_list_intact_trainval_split_by_seed_labels_from_class_ids(tmp_path):
    root = _pet_tree(tmp_path / "pets")
    test = get_dataset("oxford-pet", root, "test", SIDE)
    listed = [line.split()[0] for line in (root / "annotations" / "test.txt").read_text().splitlines()]
    assert _ids(test) == listed
    assert test.class_names == ["Abyssinian", "american_bulldog", "Bengal"]
    assert [r.label for r in test.records] == [int(line.split()[1]) - 1 for line in
                                               (root / "annotations" / "test.txt").read_text().splitlines()]
    trainval = {line.split()[0] for line in (root / "annotations" / "trainval.txt").read_text().splitlines()[1:]}
    splits = {seed: (get_dataset("oxford-pet", root, "train", SIDE, seed=seed),
                     get_dataset("oxford-pet", root, "val", SIDE, seed=seed)) for seed in (0, 1)}
    for train, val in splits.values():
        assert len(val) == round(VAL_SHARE * 18) == 3
        assert set(_ids(train)) | set(_ids(val)) == trainval and not set(_ids(train)) & set(_ids(val))
    assert _ids(splits[0][1]) != _ids(splits[1][1])
    assert _ids(get_dataset("oxford-pet", root, "val", SIDE, seed=0)) == _ids(splits[0][1])
    info = dataset_info("oxford-pet", root)
    assert info["splits"] == {"train": 15, "val": 3, "test": 6} and info["num_classes"] == 3


def test_the_object_is_the_foreground_and_the_boundary_band_goes_where_asked(tmp_path):
    root = _pet_tree(tmp_path / "pets")
    for boundary, values in (("background", (1,)), ("object", (1, 3))):
        test = get_dataset("oxford-pet", root, "test", SIDE, boundary=boundary)
        sample = test[0]
        trimap = np.asarray(Image.open(test.records[0].mask))
        assert sample["has_mask"]
        np.testing.assert_array_equal(sample["mask"].numpy(), np.isin(trimap, values))
    assert int(np.isin(trimap, (1,)).sum()) == 64 and int(np.isin(trimap, (1, 3)).sum()) == 100
    with pytest.raises(VfmxaiError, match="data.pet_boundary='edge': choose one of background, object"):
        get_dataset("oxford-pet", root, "test", SIDE, boundary="edge")
    config = preset("toy")
    set_field(config, "data.pet_boundary", "object")
    assert config.data.pet_boundary == "object"


def test_a_nested_root_is_found_and_a_wrong_one_is_one_line(tmp_path):
    _pet_tree(tmp_path / "data" / "oxford-iiit-pet")
    assert len(get_dataset("oxford-pet", tmp_path / "data", "test", SIDE)) == 6
    (tmp_path / "empty").mkdir()
    with pytest.raises(VfmxaiError, match=r"empty: not an Oxford-IIIT Pet folder \(no annotations/test.txt"):
        get_dataset("oxford-pet", tmp_path / "empty", "train", SIDE)


def test_check_reports_every_problem_one_line_each_naming_the_file(tmp_path):
    root = _pet_tree(tmp_path / "pets")
    assert check_dataset("oxford-pet", root) == []
    annotations = root / "annotations"
    lines = annotations.joinpath("test.txt").read_text().splitlines()
    first, second = lines[0].split()[0], lines[1].split()[0]
    Image.fromarray(np.full((SIDE, SIDE), 7, dtype=np.uint8)).save(annotations / "trimaps" / f"{first}.png")
    (annotations / "trimaps" / f"{second}.png").unlink()
    lines.append("Bengal_99 1 1 1")  # Bengal under Abyssinian's class id
    lines.append("just_one_field")
    (annotations / "test.txt").write_text("\n".join(lines) + "\n")
    trainval_image = annotations.joinpath("trainval.txt").read_text().splitlines()[1].split()[0]
    (root / "images" / f"{trainval_image}.jpg").unlink()
    problems = check_dataset("oxford-pet", root)
    expected = [
        f"test.txt:{len(lines) - 1}: class 1 is 'Abyssinian' elsewhere, 'Bengal' here",
        f"test.txt:{len(lines)}: expected '<Image> <CLASS-ID> <SPECIES> <BREED-ID>'",
        f"{first}.png: not an Oxford-IIIT Pet trimap (value 7; expected 1, 2 or 3)",
        f"{second}.png: trimap of '{second}' not found",
        f"{trainval_image}.jpg: file not found",
    ]
    assert len(problems) == len(expected), problems
    for fragment in expected:
        assert sum(fragment in line for line in problems) == 1, (fragment, problems)
    assert all("\n" not in line for line in problems)
    with pytest.raises(VfmxaiError, match=f"test.txt:{len(lines)}: expected '<Image>"):
        get_dataset("oxford-pet", root, "test", SIDE)  # a dataset is read strictly: the first problem, in one line
    (annotations / "test.txt").write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(VfmxaiError, match=f"{second}.png: trimap of test image '{second}' not found"):
        get_dataset("oxford-pet", root, "test", SIDE)


def test_data_info_and_check_through_the_command_line(tmp_path, capsys):
    root = _pet_tree(tmp_path / "pets")
    assert main(["data", "info", "--dataset", "oxford-pet", "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"train": 15, "val": 3, "test": 6}
    assert main(["data", "check", "--dataset", "oxford-pet", "--root", str(root)]) == 0
    capsys.readouterr()
    (root / "annotations" / "trimaps" / f"{BREEDS[1]}_1.png").unlink()
    assert main(["data", "check", "--dataset", "oxford-pet", "--root", str(root)]) != 0
    captured = capsys.readouterr()
    assert f"{BREEDS[1]}_1.png: trimap of '{BREEDS[1]}_1' not found" in captured.out + captured.err
