import json

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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("backbone.lora=maybe", "backbone.lora='maybe': expected true or false"),
        ("train.epochs=abc", "train.epochs='abc': expected an integer"),
        ("train.epochs=1.5", "train.epochs=1.5: expected an integer"),
        ("train.epochs=-3", "train.epochs=-3: must be >= 1"),
        ("train.lr=NaN", "train.lr=nan: expected a finite number"),
        ("train.lr=0", "train.lr=0.0: must be > 0"),
        ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
        ("backbone.lora_rank=0", "backbone.lora_rank=0: must be >= 1"),
        ("model.heads=3", "model.heads=3: must divide model.dim=64"),
        ("train.betas=[2,3]", r"train.betas=\[2.0, 3.0\]: must be two numbers in \[0, 1\)"),
        ("train.precision=bf16-mixed", "train.precision='bf16-mixed': choose one of auto, bf16, fp32"),
        ("train.devices=banana", "train.devices='banana': must be >= 1 or auto"),
        ("train.num_nodes=-1", "train.num_nodes=-1: must be >= 1"),
        ("train.seed=-5", "train.seed=-5: must be >= 0"),
        ("train=5", "--set train=5: 'train' is a section"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key_and_what_is_allowed(override, message):
    from vfmxai.run_folder import Recipe

    with pytest.raises(VfmxaiError, match=f"^{message}"):
        Recipe("toy", "synthetic", overrides=(override,)).config()


def test_the_python_spelling_of_a_bool_is_a_bool_and_text_fields_keep_their_text():
    from vfmxai.run_folder import Recipe

    config = Recipe("toy", "synthetic", overrides=("backbone.lora=False", "train.aea=FALSE", "backbone.name=123",
                                                   "train.lr=1", "train.precision=fp32")).config()
    assert config.backbone.lora is False and config.train.aea is False
    assert config.backbone.name == "123" and config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_an_edited_config_file_is_checked_like_an_override(tmp_path):
    path = tmp_path / "config.json"
    for section, field, value, message in (
        ("backbone", "lora", "False", None), ("train", "epochs", "10", "train.epochs='10': expected an integer"),
        ("model", "dim", 10**9, "model.dim=1000000000: must be <= 4096"),
        ("model", "dim", 66, "model.heads=4: must divide model.dim=66"),
    ):
        data = preset("toy").to_dict()
        data[section][field] = value
        path.write_text(json.dumps(data))
        if message is None:
            assert RunConfig.load(path).backbone.lora is False
        else:
            with pytest.raises(VfmxaiError, match=f"^{path}: {message}"):
                RunConfig.load(path)
