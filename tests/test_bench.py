"""`vfmxai bench` on the tiny backbone: bench.json's shape and arithmetic, the FLOP count, LoRA merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vfmxai.ala import build_model
from vfmxai.backbones import load_backbone
from vfmxai.backbones.lora import merged_lora
from vfmxai.bench import BenchSettings, backbone_flops, bench_config, run_bench, vit_flops
from vfmxai.errors import VfmxaiError


def test_bench_json_has_the_design_shape_and_ratios(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = BenchSettings(
        backbone="tiny", batch_size=2, repeats=1, warmup=0, methods=("ala", "rise"),
        method_options={"rise": {"n_masks": 4}}, insdel_steps=3, clock="cpu",
    )
    result = run_bench(tmp_path, settings)
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    assert {"device", "backbone", "batch_size", "reference", "rows"} <= set(result)
    assert (result["backbone"], result["batch_size"], result["image_size"], result["clock"]) == ("tiny", 2, 32, "cpu")
    assert result["device"].startswith("cpu: ")
    ref = result["reference"]
    assert ref["task"] == "forward" and ref["images_per_s"] > 0
    assert ref["flops_per_image"] == vit_flops(32, 8, 32, 64, 4)
    assert ref["flop_per_s"] == pytest.approx(ref["flops_per_image"] * ref["images_per_s"], rel=1e-12)
    tasks = ["forward:ala", "explain:ala", "explain:rise", "insdel", "train_step:lora_ala", "train_step:full_finetune"]
    assert [row["task"] for row in result["rows"]] == tasks
    for row in result["rows"]:
        assert {"task", "images_per_s", "ratio", "peak_mem_mb"} <= set(row)
        assert row["ratio"] == pytest.approx(row["images_per_s"] / ref["images_per_s"], rel=1e-12)
        assert row["images_per_s_min"] <= row["images_per_s"] <= row["images_per_s_max"]
        assert row["peak_mem_mb"] >= 0
    by_task = {row["task"]: row for row in result["rows"]}
    assert by_task["explain:rise"]["options"] == {"n_masks": 4, "batch_size": 2}
    assert by_task["insdel"]["options"]["model_passes"] == 2 * 3 * 2  # 2 * steps per image: ends scored once
    model_rate = by_task["forward:ala"]["images_per_s"]
    assert by_task["insdel"]["ratio_to_model"] == pytest.approx(by_task["insdel"]["images_per_s"] / model_rate)
    assert [row["task"] for row in result["rows"] if "ratio_to_model" in row] == ["insdel"]
    parts = result["ala_parts"]
    assert list(parts) == ["former", "f1", "perception"] and all(0 < share < 10 for share in parts.values())

    table = (tmp_path / "bench.md").read_text()
    assert table in capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert [line.split(" | ")[0][2:] for line in rows] == ["forward", *tasks]
    assert f"| {by_task['insdel']['ratio']:.3f} |" in rows[4]
    assert f"over `forward:ala`'s (the explained model's own pass): {by_task['insdel']['ratio_to_model']:.3f}." in table
    assert f"(together {100 * sum(parts.values()):.1f} %)" in table


def test_vit_flops_match_a_hand_count() -> None:
    # tiny: 32 px, patch 8 -> P = 16 patches, N = 17 tokens, D = 32, I = 64, 4 blocks
    embed = 16 * (3 * 8 * 8) * 32  # 98_304
    block = 4 * 17 * 32 * 32 + 2 * 17 * 17 * 32 + 2 * 17 * 32 * 64  # 69_632 + 18_496 + 69_632
    assert vit_flops(32, 8, 32, 64, 4) == 2 * (embed + 4 * block) == 1_458_688
    assert backbone_flops(load_backbone("tiny")) == 1_458_688
    assert backbone_flops(load_backbone("tiny"), 64) == vit_flops(64, 8, 32, 64, 4)
    # CLIP ViT-B/16 at 224 px: the 17.56 G multiply-adds usually quoted for it
    assert vit_flops(224, 16, 768, 3072, 12) == 2 * 17_563_060_224


def test_merged_lora_is_the_same_function_and_restores_the_weights_exactly() -> None:
    config = bench_config("tiny", 32)
    torch.manual_seed(0)
    model = build_model(config).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # peft starts B at 0: make the update nonzero
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q_proj = model.backbone.blocks[0].self_attn.q_proj
    delta = (q_proj.lora_B["default"].weight @ q_proj.lora_A["default"].weight) * q_proj.scaling["default"]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(images)
        with merged_lora(model):
            torch.testing.assert_close(q_proj.base_layer.weight, before[_key(model, q_proj)] + delta)
            merged = model(images)
    torch.testing.assert_close(merged, plain, rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def _key(model: torch.nn.Module, layer: torch.nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is layer) + ".base_layer.weight"


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(VfmxaiError, match="--batch-size"):
        run_bench(tmp_path, BenchSettings(backbone="tiny", batch_size=0))
    with pytest.raises(VfmxaiError, match="--methods: unknown method"):
        run_bench(tmp_path, BenchSettings(backbone="tiny", methods=("nope",)))
    with pytest.raises(VfmxaiError, match="method 'rise': unknown option 'bogus'"):
        BenchSettings(backbone="tiny", methods=("rise",), method_options={"rise": {"bogus": 1}})
    with pytest.raises(VfmxaiError, match="--clock"):
        run_bench(tmp_path, BenchSettings(backbone="tiny", clock="sundial"))
    with pytest.raises(VfmxaiError, match="--train"):
        run_bench(tmp_path, BenchSettings(backbone="tiny", train=("sgd",)))


def test_cli_bench_picks_train_rows_and_rejects_unknown_ones(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vfmxai.cli import main

    common = ["bench", "--backbone", "tiny", "--batch-size", "2", "--repeats", "1", "--warmup", "0"]
    common += ["--methods", "ala", "--insdel-steps", "1", "--out", str(tmp_path)]
    assert main([*common, "--train", "none"]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [row["task"] for row in rows] == ["forward:ala", "explain:ala", "insdel"]
    assert main([*common, "--train", "lora_ala"]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [row["task"] for row in rows] == ["forward:ala", "explain:ala", "insdel", "train_step:lora_ala"]
    capsys.readouterr()
    assert main([*common, "--train", "lora"]) == 1
    assert capsys.readouterr().err.strip() == (
        "vfmxai: error: --train: unknown task(s) lora (known: lora_ala, full_finetune)"
    )
