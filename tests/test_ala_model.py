import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai.ala import ALAModel, build_model, inject_indices
from vfmxai.config import ALAConfig, preset
from vfmxai.errors import VfmxaiError
from vfmxai.training import load_weights, save_weights


def test_inject_layers_both_readings_and_ablation():
    config = ALAConfig(n_inject=4, depth=8)
    assert inject_indices(config, 12) == [0, 1, 2, 3]
    config.inject_layers = "spread"
    assert inject_indices(config, 12) == [0, 4, 7, 11]
    config.inject_layers = "0,6,12"
    assert inject_indices(config, 12) == [0, 6, 12]
    config.lattice = False
    assert inject_indices(config, 12) == [12]
    with pytest.raises(VfmxaiError, match="inject_layers"):
        inject_indices(ALAConfig(inject_layers="0,13"), 12)


def test_forward_shapes_and_one_backbone_pass():
    model = _tiny_model()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    images = torch.rand(3, 3, 32, 32)
    maps, logits = model.explain(images)
    assert maps.shape == (3, 32, 32) and logits.shape == (3, 6) and len(calls) == 1
    assert 0 <= maps.min() and maps.max() <= 1


def _tiny_model() -> ALAModel:
    config = tiny_run_config()
    config.model.num_classes = 6
    return build_model(config)


def test_perception_branch_reads_the_map_times_the_last_state():
    model = _tiny_model()
    images = torch.rand(2, 3, 32, 32)
    seen = {}
    model.perception.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    out = model.forward_all(images)
    last = model.backbone.patch_grid(model.backbone.hidden_states(images)[-1])
    torch.testing.assert_close(seen["x"], last * out.alpha[:, None])
    model.use_map = False
    model.forward_all(images)
    torch.testing.assert_close(seen["x"], last)


def test_loss_is_pb_plus_lambda_ala():
    model = _tiny_model()
    out = model.forward_all(torch.rand(2, 3, 32, 32))
    labels = torch.tensor([1, 4])
    ce = torch.nn.functional.cross_entropy
    model.config.lambda_ala = 0.25
    torch.testing.assert_close(model.loss(out, labels), ce(out.logits, labels) + 0.25 * ce(out.logits_ala, labels))


def test_checkpoint_holds_only_trainable_weights_and_reloads_identically(tmp_path):
    model = _tiny_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    save_weights(model, tmp_path / "w.safetensors")
    fresh = _tiny_model().eval()
    images = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(fresh(images), model(images))
    load_weights(fresh, tmp_path / "w.safetensors")
    torch.testing.assert_close(fresh.explain(images), model.explain(images), rtol=0, atol=0)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "w.safetensors")).keys()
    assert all(not k.startswith("backbone.") or "lora_" in k for k in keys)
    assert any("lora_" in k for k in keys)


def test_full_size_clip_b16_at_384_trains_one_step_and_explains():
    torch.set_num_threads(2)
    config = preset("cub")
    config.backbone.name = "clip-vit-b16"
    config.model.num_classes = 200
    model = build_model(config)
    trainable = {k: v.numel() for k, v in model.trainable_state_dict().items()}
    assert sum(trainable.values()) * 4 / 2**20 < 20
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5)
    images = torch.rand(1, 3, 384, 384)
    out = model.forward_all(images)
    assert out.logits.shape == (1, 200) and out.logits_ala.shape == (1, 200) and out.alpha.shape == (1, 24, 24)
    model.loss(out, torch.tensor([7])).backward()
    lora = [p for n, p in model.backbone.named_parameters() if "lora_B" in n]
    assert all(p.grad is not None for p in lora)
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if "lora_" not in n)
    optimizer.step()
    with torch.no_grad():
        maps, logits = model.explain(images)
    assert maps.shape == (1, 384, 384) and logits.shape == (1, 200)


def test_prediction_and_explanation_skip_f2_and_keep_the_same_outputs():
    model = _tiny_model().eval()
    images = torch.rand(2, 3, 32, 32)
    calls = []
    model.ala_head.register_forward_hook(lambda m, args, out: calls.append(out))
    full = model.forward_all(images)
    assert len(calls) == 1
    maps, logits = model.explain(images)
    torch.testing.assert_close(model(images), full.logits, rtol=0, atol=0)
    torch.testing.assert_close(logits, full.logits, rtol=0, atol=0)
    upsampled = torch.nn.functional.interpolate(full.alpha[:, None], size=(32, 32), mode="bilinear")
    torch.testing.assert_close(maps, upsampled[:, 0], rtol=0, atol=0)
    assert len(calls) == 1 and model.forward_all(images, ala_logits=False).logits_ala is None
