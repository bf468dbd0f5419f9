"""EvaluationSettings and Source: checked when made, frozen, and the same after a trip to a worker process."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from vfmxai.errors import VfmxaiError
from vfmxai.evaluation import ABLATIONS, EvaluationSettings, Processes, Shard, Source
from vfmxai.evaluation.reproduce import render_ablation_markdown


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "--steps must be a positive integer, got 0"),
        ({"steps": True}, "--steps must be a positive integer, got True"),
        ({"substrate": "white"}, "--substrate must be one of black, blur, mean, model-mean, got 'white'"),
        ({"threshold_on": "minmax"}, "--threshold-on must be one of normalised, raw, got 'minmax'"),
        ({"target_mode": "top"}, "--target must be one of given, predicted, got 'top'"),
        ({"threshold": 1.5}, r"--threshold must be in \[0, 1\], got 1.5"),
        ({"batch_size": 0}, "--batch-size must be a positive integer, got 0"),
        ({"perturb_batch_size": -2}, "perturb_batch_size must be a positive integer, got -2"),
        ({"n_grid": -1}, "n_grid must be a non-negative integer, got -1"),
        ({"num_workers": -1}, "--num-workers must be an integer >= 0, got -1"),
        ({"method_options": {"gradkam": {}}}, "method_options: unknown method 'gradkam'"),
        ({"method_options": {"rise": {"n_masks": "abc"}}}, "method 'rise': option n_masks='abc' must be of type int"),
        ({"method_options": {"rise": {"nmasks": 4}}}, "method 'rise': unknown option 'nmasks'"),
    ],
)
def test_a_wrong_setting_is_refused_when_the_settings_are_made(fields, message) -> None:
    with pytest.raises(VfmxaiError, match=f"^{message}"):
        EvaluationSettings(**fields)


def test_settings_are_frozen_and_survive_pickling_for_worker_processes(tmp_path: Path) -> None:
    settings = EvaluationSettings(steps=7, substrate="blur", method_options={"rise": {"n_masks": 8}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.steps = 3  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert settings.options_for("rise") == {"n_masks": 8} and settings.options_for("ig") == {}
    settings.options_for("rise")["n_masks"] = 1  # a copy: the settings stay as made
    assert settings.method_options["rise"]["n_masks"] == 8
    source = Source(str(tmp_path), "folder", tmp_path / "data", "val")
    assert source.run_dir == tmp_path and pickle.loads(pickle.dumps(source)) == source


def test_schedules_are_checked_when_made() -> None:
    with pytest.raises(VfmxaiError, match="--devices must be a positive integer, got 0"):
        Processes(0)
    with pytest.raises(VfmxaiError, match="--shard 3/2"):
        Shard(3, 2)
    with pytest.raises(VfmxaiError, match="initialise torch.distributed"):
        Shard.from_process_group()


def test_the_ablation_table_reads_each_row_by_name() -> None:
    assert [a.label for a in ABLATIONS.values()] == ["(i)", "(ii)", "(iii)", "(iv)"]
    assert {name: (a.aea, a.lora, a.lattice) for name, a in ABLATIONS.items()} == {
        "no_lattice": (True, True, False), "no_lora": (True, False, True),
        "no_aea": (False, True, True), "full": (True, True, True),
    }
    row = {m: 0.5 for m in ("miou", "insertion", "deletion", "id")}
    table = {"methods": dict.fromkeys(ABLATIONS, row), "p_values": {}, "seeds": [0], "dataset": "d",
             "split": "test", "n_images": 1}
    lines = [line for line in render_ablation_markdown(table).splitlines() if line.startswith("| (")]
    assert [[cell.strip() for cell in line.split("|")[1:5]] for line in lines] == [
        ["(i)", "✓", "✓", ""], ["(ii)", "✓", "", "✓"], ["(iii)", "", "✓", "✓"], ["(iv)", "✓", "✓", "✓"]
    ]
