import pytest

from vfmxai.config import RunConfig, apply_overrides, preset
from vfmxai.errors import VfmxaiError


def test_presets_hold_the_papers_table_1():
    cub, ins = preset("cub"), preset("imagenet_s")
    assert (cub.train.epochs, cub.train.batch_size, cub.train.lr, cub.train.weight_decay) == (120, 8, 5e-5, 1e-4)
    assert (cub.model.heads, cub.model.depth, cub.model.patch_size, cub.model.dim) == (4, 8, 16, 64)
    assert (ins.train.epochs, ins.train.batch_size) == (20, 64)
    assert (ins.model.heads, ins.model.depth, ins.model.patch_size, ins.model.dim) == (6, 8, 16, 240)
    assert cub.backbone.image_size == ins.backbone.image_size == 384
    assert cub.train.betas == [0.9, 0.999] and cub.train.patience == 5


def test_json_round_trip(tmp_path):
    config = apply_overrides(preset("cub"), ["train.epochs=3", "model.inject_layers=spread", "backbone.lora=false"])
    config.save(tmp_path / "c.json")
    again = RunConfig.load(tmp_path / "c.json")
    assert again == config
    assert (again.train.epochs, again.model.inject_layers, again.backbone.lora) == (3, "spread", False)


@pytest.mark.parametrize(
    "override, words",
    [("train.epoch=3", "unknown field"), ("nothing.x=1", "unknown section"), ("train.epochs", "key=value")],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(VfmxaiError, match=words):
        apply_overrides(preset("toy"), [override])


def test_unknown_preset_and_bad_config_file(tmp_path):
    with pytest.raises(VfmxaiError, match="unknown preset 'cubb'"):
        preset("cubb")
    (tmp_path / "c.json").write_text('{"train": {"epochz": 1}}')
    with pytest.raises(VfmxaiError, match="epochz"):
        RunConfig.load(tmp_path / "c.json")
