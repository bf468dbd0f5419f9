import csv

import lightning as L
import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai.backbones import load_backbone
from vfmxai.errors import VfmxaiError
from vfmxai.run_folder import load_run
from vfmxai.training import aea_map_on, train


class PhaseRecorder(L.Callback):
    """Snapshots of every parameter group at epoch start/end, and what the perception branch saw."""

    def __init__(self):
        self.start, self.end, self.pb_inputs, self.last_grids, self.map_on = {}, {}, {}, {}, {}
        self._handles = []

    @staticmethod
    def _groups(model):
        adapter = {f"{i}.{n}": p.detach().clone() for i, m in enumerate(model.adapter_modules())
                   for n, p in m.named_parameters()}
        perception = {n: p.detach().clone() for n, p in model.perception.named_parameters()}
        lora = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" in n}
        frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" not in n}
        return {"adapter": adapter, "perception": perception, "lora": lora, "frozen": frozen}

    def on_train_epoch_start(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        model = pl_module.model
        self.start[epoch] = self._groups(model)
        self.map_on[epoch] = model.use_map
        self.pb_inputs[epoch], self.last_grids[epoch] = [], []

        def pb_input(module, args):
            if trainer.training:
                self.pb_inputs[epoch].append(args[0].detach())

        def last_grid(module, args, out):
            if trainer.training:
                self.last_grids[epoch].append(model.backbone.patch_grid(out.hidden_states[-1]).detach())

        self._handles = [
            model.perception.register_forward_pre_hook(pb_input),
            model.backbone.register_forward_hook(last_grid),
        ]

    def on_train_epoch_end(self, trainer, pl_module):
        for handle in self._handles:
            handle.remove()
        self.end[trainer.current_epoch + 1] = self._groups(pl_module.model)


def _changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_aea_schedule_counts_epochs_from_one():
    assert [aea_map_on(e) for e in range(1, 5)] == [True, False, True, False]
    assert all(aea_map_on(e, enabled=False) for e in range(1, 5))


def test_aea_odd_epochs_train_everything_even_epochs_freeze_the_adapter(tmp_path):
    recorder = PhaseRecorder()
    train(tiny_run_config(epochs=3), tmp_path / "run", progress=False, callbacks=[recorder])
    assert recorder.map_on == {1: True, 2: False, 3: True}
    for epoch in (1, 3):
        start, end = recorder.start[epoch], recorder.end[epoch]
        assert _changed(start["adapter"], end["adapter"]) and _changed(start["perception"], end["perception"])
        assert _changed(start["lora"], end["lora"])
        pairs = zip(recorder.pb_inputs[epoch], recorder.last_grids[epoch], strict=True)
        assert not any(torch.equal(x, g) for x, g in pairs)
    start, end = recorder.start[2], recorder.end[2]
    assert not _changed(start["adapter"], end["adapter"]), "an ALA parameter moved in an even epoch"
    assert _changed(start["perception"], end["perception"]) and _changed(start["lora"], end["lora"])
    for seen, grid in zip(recorder.pb_inputs[2], recorder.last_grids[2], strict=True):
        torch.testing.assert_close(seen, grid, rtol=0, atol=0)
    pristine = dict(load_backbone("tiny", 32).named_parameters())
    for name, value in recorder.end[3]["frozen"].items():
        assert torch.equal(value, pristine[name.replace(".base_layer", "")]), name


def test_no_aea_ablation_trains_the_adapter_every_epoch(tmp_path):
    recorder = PhaseRecorder()
    train(tiny_run_config(epochs=2, aea=False), tmp_path / "run", progress=False, callbacks=[recorder])
    assert recorder.map_on == {1: True, 2: True}
    assert _changed(recorder.start[2]["adapter"], recorder.end[2]["adapter"])


def test_no_lora_ablation_keeps_the_whole_backbone_frozen(tmp_path):
    config = tiny_run_config(epochs=1)
    config.backbone.lora = False
    recorder = PhaseRecorder()
    train(config, tmp_path / "run", progress=False, callbacks=[recorder])
    assert recorder.start[1]["lora"] == {}
    assert not _changed(recorder.start[1]["frozen"], recorder.end[1]["frozen"])


def test_run_folder_log_and_reload(tmp_path):
    run = tmp_path / "run"
    model = train(tiny_run_config(epochs=2), run, progress=False)
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["phase"] for r in rows] == ["map", "ones"]
    assert all(float(r["val_loss"]) > 0 and 0 <= float(r["train_acc"]) <= 1 for r in rows)
    reloaded, config, classes = load_run(run)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(reloaded.explain(images), model.explain(images), rtol=0, atol=0)
    assert config.model.num_classes == len(classes) == 6
    with pytest.raises(VfmxaiError, match="already holds a run"):
        train(tiny_run_config(epochs=1), run, progress=False)


def test_resume_continues_in_the_same_phase_to_the_same_weights(tmp_path):
    full = train(tiny_run_config(epochs=3, patience=0), tmp_path / "full", progress=False)
    train(tiny_run_config(epochs=2), tmp_path / "cut", progress=False)
    recorder = PhaseRecorder()
    resumed = train(tiny_run_config(epochs=3), tmp_path / "cut", resume=True, progress=False, callbacks=[recorder])
    assert recorder.map_on == {3: True}
    for (name, a), b in zip(full.trainable_state_dict().items(), resumed.trainable_state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("select_by, column", [("loss", "val_loss"), ("pb_loss", "val_pb_loss"), ("last", None)])
def test_kept_weights_are_those_of_the_epoch_select_by_names(tmp_path, select_by, column):
    recorder = PhaseRecorder()
    run = tmp_path / "run"
    train(tiny_run_config(epochs=4, select_by=select_by), run, progress=False, callbacks=[recorder])
    rows = list(csv.DictReader((run / "log.csv").open()))
    values = [float(r[column]) for r in rows] if column else None
    epoch = 4 if column is None else 1 + values.index(min(values))
    kept, _, _ = load_run(run)
    for group in ("perception", "lora"):
        snapshot = recorder.end[epoch][group]
        prefix = "perception." if group == "perception" else "backbone."
        state = {k.removeprefix(prefix): v for k, v in kept.state_dict().items() if k.startswith(prefix)}
        for name, value in snapshot.items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=f"epoch {epoch}: {name}")
    # the weights of every other epoch differ, so the check above picks out one epoch
    others = [e for e in range(1, 5) if e != epoch]
    assert all(_changed(recorder.end[e]["perception"], recorder.end[epoch]["perception"]) for e in others)


def test_unknown_select_by_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(VfmxaiError, match="train.select_by='best'"):
        train(tiny_run_config(select_by="best"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
