import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmxai.backbones import load_backbone
from vfmxai.backbones.loading import DEFAULT_DIR
from vfmxai.data.synthetic import class_names
from vfmxai.errors import VfmxaiError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_default_backbone.py"


@pytest.fixture(scope="module")
def pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_default_backbone", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pretrain


def test_shipped_default_backbone_is_the_documented_small_clip_vit():
    weights = DEFAULT_DIR / "model.safetensors"
    assert weights.stat().st_size <= 15 * 2**20
    backbone = load_backbone("default")
    assert (backbone.hidden_size, backbone.num_blocks, backbone.patch_size, backbone.image_size) == (192, 6, 8, 64)
    assert backbone.model.config.hidden_act == "quick_gelu"
    record = json.loads((DEFAULT_DIR / "pretraining.json").read_text())
    assert "scripts/pretrain_default_backbone.py" in record["command"] and SCRIPT.is_file()
    assert not set(class_names("pretrain")) & set(class_names("demo")), "pretraining classes must be disjoint"
    assert record["history"][-1]["val_accuracy"] > 2 * record["chance_accuracy"]


def test_pretraining_is_deterministic_from_its_seed(tmp_path, pretrain):
    first = pretrain(tmp_path / "a", seed=3, n_train=64, n_val=16, steps=2, batch_size=16)
    second = pretrain(tmp_path / "b", seed=3, n_train=64, n_val=16, steps=2, batch_size=16)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first["history"] == second["history"]
    other = pretrain(tmp_path / "c", seed=4, n_train=64, n_val=16, steps=2, batch_size=16)
    c = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert other["seed"] == 4


def test_missing_default_weights_name_the_script_that_rebuilds_them(tmp_path, monkeypatch):
    monkeypatch.setattr("vfmxai.backbones.loading.DEFAULT_DIR", tmp_path)
    with pytest.raises(VfmxaiError, match="missing") as caught:
        load_backbone("default")
    named = re.search(r"`python (\S+)`", str(caught.value)).group(1)
    assert (SCRIPT.parents[1] / named).resolve() == SCRIPT
