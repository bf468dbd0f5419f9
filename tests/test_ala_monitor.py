"""The map's health statistics and the degenerate-map verdict, on maps whose answers are known by hand."""

import math

import torch

from vfmxai.ala.monitor import FLAT_SPREAD, check_map, localisation_statistics, map_statistics


def test_statistics_of_hand_made_maps():
    uniform = torch.full((1, 4, 4), 0.25)
    one_cell = torch.zeros(1, 4, 4)
    one_cell[0, 1, 2] = 1.0
    frame = torch.ones(1, 4, 4)
    frame[0, 1:3, 1:3] = 0.0
    stats = {name: map_statistics(m) for name, m in (("uniform", uniform), ("cell", one_cell), ("frame", frame))}
    assert math.isclose(float(stats["uniform"]["entropy"]), 1.0, rel_tol=1e-6)
    assert float(stats["cell"]["entropy"]) == 0.0
    assert float(stats["uniform"]["spread"]) == 0.0 and float(stats["uniform"]["area"]) == 0.0
    assert float(stats["frame"]["area"]) == 12 / 16 and float(stats["frame"]["border"]) == 1.0
    assert float(stats["cell"]["border"]) == -0.25  # the lit cell is inside: ring mean 0, inner mean 1/4
    assert math.isclose(float(stats["cell"]["spread"]), math.sqrt(1 / 16 - 1 / 256), rel_tol=1e-6)


def test_localisation_statistics_hit_and_miss():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = maps[1, 3, 3] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    loc = localisation_statistics(maps, masks)
    assert loc["pg"].tolist() == [1.0, 0.0] and loc["mask_share"].tolist() == [0.25, 0.25]
    assert loc["iou"].tolist() == [0.25, 0.0]


def test_check_map_flags_a_constant_map_and_a_map_at_chance_but_not_a_good_one():
    n = 40
    masks = torch.zeros(n, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    has_mask = torch.ones(n, dtype=torch.bool)
    flat = torch.full((n, 8, 8), 0.7)
    verdict = check_map(flat, masks, has_mask)
    assert verdict.degenerate and any("nearly constant" in p for p in verdict.problems)
    assert verdict.spread < FLAT_SPREAD
    frame = torch.zeros(n, 8, 8)
    frame[:, 0, :] = 1.0
    frame += 0.01 * torch.rand(n, 8, 8, generator=torch.Generator().manual_seed(0))
    at_chance = check_map(frame, masks, has_mask)
    assert at_chance.pointing_game == 0.0 and any("not above chance" in p for p in at_chance.problems)
    assert at_chance.border > 0
    good = torch.zeros(n, 8, 8)
    good[:, 2:5, 2:5] = 1.0
    good += 0.01 * torch.rand(n, 8, 8, generator=torch.Generator().manual_seed(1))
    fine = check_map(good, masks, has_mask)
    assert not fine.degenerate and fine.pointing_game == 1.0 and math.isclose(fine.chance, 9 / 64)
    without_masks = check_map(good, masks, torch.zeros(n, dtype=torch.bool))
    assert without_masks.pointing_game is None and not without_masks.degenerate


def test_train_writes_the_map_check_and_the_cli_warns_in_one_line_when_the_map_is_constant(
    tmp_path, capsys, monkeypatch
):
    """A map forced constant (f1's output replaced by 0.5 everywhere) trains, and `train` says so at the end."""
    import json

    from vfmxai.ala import ALAModel
    from vfmxai.cli import main
    from vfmxai.run_folder import MAP_CHECK

    tiny = ["--backbone", "tiny", "--set", "backbone.image_size=32", "--set", "data.synth_size=32",
            "--set", "data.n_train=8", "--set", "data.n_val=6", "--set", "train.epochs=1", "--no-progress"]
    assert main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "ok"), *tiny]) == 0
    healthy = json.loads((tmp_path / "ok" / MAP_CHECK).read_text())
    assert healthy["n_images"] == 6 and healthy["n_with_mask"] == 6 and 0 < healthy["chance"] < 1
    capsys.readouterr()

    original = ALAModel.attention_map

    def constant(self, grid):
        features, alpha = original(self, grid)
        return features, torch.full_like(alpha, 0.5) + 0 * alpha

    monkeypatch.setattr(ALAModel, "attention_map", constant)
    assert main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "flat"), *tiny]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ALA map is degenerate" in err[0] and "nearly constant" in err[0], err
    flat = json.loads((tmp_path / "flat" / MAP_CHECK).read_text())
    assert flat["degenerate"] and flat["spread"] == 0.0
