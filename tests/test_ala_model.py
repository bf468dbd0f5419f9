import pytest
import torch
from run_fixtures import tiny_run_config

from vfmxai.ala import ALAModel, build_model, inject_indices
from vfmxai.checkpoint import load_weights, save_weights
from vfmxai.config import ALAConfig, preset
from vfmxai.errors import VfmxaiError


def test_inject_layers_both_readings_and_ablation():
    config = ALAConfig(n_inject=4, depth=8)
    assert inject_indices(config, 12) == [0, 1, 2, 3]
    config.inject_layers = "spread"
    assert inject_indices(config, 12) == [0, 4, 7, 11]
    config.inject_layers = "0,6,12"
    assert inject_indices(config, 12) == [0, 6, 12]
    config.lattice = False
    assert inject_indices(config, 12) == []
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


def _tiny_model(**model_fields: object) -> ALAModel:
    """The tiny run's ALA model with 6 classes and any `ALAConfig` fields set."""
    config = tiny_run_config()
    config.model.num_classes = 6
    for name, value in model_fields.items():
        setattr(config.model, name, value)
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


@pytest.mark.slow
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


def test_f2_reads_h_ala_so_even_epochs_leave_only_the_pb_loss_on_lora():
    """Paper §4.2: f2 takes h_ALA. In an even AEA epoch h_ALA is all-ones, so p_ALA is the same for every image
    and the gradient reaching LoRA is that of CE(p_PB) alone; with f2 on the features it is not."""
    model = _tiny_model()
    model.use_map = False
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out = model.forward_all(images)
    torch.testing.assert_close(out.logits_ala, out.logits_ala[:1].expand_as(out.logits_ala))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    full = torch.autograd.grad(model.loss(out, labels), lora, allow_unused=True)
    pb_only = torch.autograd.grad(
        torch.nn.functional.cross_entropy(model.forward_all(images).logits, labels), lora, allow_unused=True
    )
    for a, b in zip(full, pb_only, strict=True):
        torch.testing.assert_close(a, b)

    features_model = _tiny_model(ala_head_input="features")
    features_model.use_map = False
    out = features_model.forward_all(images)
    assert not torch.allclose(out.logits_ala, out.logits_ala[:1].expand_as(out.logits_ala))


def test_f2_reads_the_map_in_odd_epochs():
    model = _tiny_model()
    seen = {}
    model.ala_head.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    out = model.forward_all(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(seen["x"], out.alpha[:, None])


@pytest.mark.parametrize("head_input", ["map", "features"])
def test_ce_of_p_ala_reaches_alpha_only_when_f2_reads_the_map(head_input):
    """The diagnosis of the unseen-data failure rests on this: with f2 reading F, CE(p_ALA) leaves the
    map's own 1x1 conv (what turns F into alpha) untouched, so only the perception branch shapes alpha."""
    model = _tiny_model(ala_head_input=head_input)
    out = model.forward_all(torch.rand(2, 3, 32, 32))
    ce_ala = torch.nn.functional.cross_entropy(out.logits_ala, torch.tensor([0, 3]))
    grads = torch.autograd.grad(ce_ala, [model.map_out.weight, model.map_features[0].weight], allow_unused=True)
    assert (grads[0] is not None and grads[0].abs().sum() > 0) == (head_input == "map")
    assert grads[1] is not None and grads[1].abs().sum() > 0


def test_without_the_lattice_the_map_ignores_every_backbone_block():
    """The no-lattice ablation injects no VFM state: perturbing every block's weights leaves alpha unchanged."""
    model = _tiny_model(lattice=False).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = model.forward_all(images).alpha
        for p in model.backbone.blocks.parameters():
            p.add_(torch.randn_like(p))
        after = model.forward_all(images).alpha
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert len(model.former.inject) == 0


def test_image_map_norm_standardises_the_logits_within_each_image():
    model = _tiny_model(map_norm="image")
    alpha = model.forward_all(torch.rand(3, 3, 32, 32)).alpha
    logits = torch.logit(alpha.double()).flatten(1)
    torch.testing.assert_close(logits.mean(1), torch.zeros(3, dtype=torch.double), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.std(1, correction=0), torch.ones(3, dtype=torch.double), atol=1e-3, rtol=0)


def test_pb_token_norm_standardises_each_token_before_the_gate():
    model = _tiny_model(pb_token_norm="layernorm")
    model.use_map = False
    seen = {}
    model.perception.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model.forward_all(torch.rand(2, 3, 32, 32))
    tokens = seen["x"].flatten(2)
    torch.testing.assert_close(tokens.mean(1), torch.zeros_like(tokens[:, 0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "field", ["ala_head_input", "map_norm", "pb_token_norm", "gate_norm", "head_init", "conv_padding"]
)
def test_unknown_reading_is_one_line_naming_the_field(field):
    with pytest.raises(VfmxaiError, match=f"model.{field}='banana'"):
        _tiny_model(**{field: "banana"})


def test_zero_head_init_predicts_uniform_at_step_zero():
    out = _tiny_model(head_init="zeros").forward_all(torch.rand(2, 3, 32, 32))
    assert torch.equal(out.logits, torch.zeros_like(out.logits))
    assert torch.equal(out.logits_ala, torch.zeros_like(out.logits_ala))


def test_mean_gate_norm_divides_alpha_by_its_grid_mean_and_leaves_ones():
    model = _tiny_model(gate_norm="mean")
    alpha = torch.rand(2, 1, 4, 4) + 0.1
    torch.testing.assert_close(model.h_ala(alpha), alpha / alpha.mean(dim=(2, 3), keepdim=True))
    assert torch.equal(model.h_ala(alpha, map_on=False), torch.ones_like(alpha))


def test_a_pass_with_map_on_ignores_aea_even_epoch_switch():
    """Validation scores the model with its map in every epoch without touching AEA's `use_map`."""
    model = _tiny_model().eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        with_map = model.forward_all(images)
        model.use_map = False
        ones = model.forward_all(images)
        forced = model.forward_all(images, map_on=True)
    assert model.use_map is False
    assert torch.equal(forced.logits, with_map.logits) and not torch.equal(ones.logits, with_map.logits)


@pytest.mark.parametrize("padding, flat", [("replicate", True), ("zeros", False)])
def test_replicate_padding_leaves_no_border_for_the_convs_to_find(padding, flat):
    """A spatially constant input gives a constant map and constant head features with `replicate`; with zero
    padding the border cells come out different (what let the map single out a frame)."""
    model = _tiny_model(conv_padding=padding)
    grid = torch.randn(2, model.config.dim, 1, 1).expand(2, model.config.dim, 6, 6)
    _, alpha = model.attention_map(grid)
    body = model.perception.body(torch.randn(2, model.backbone.hidden_size, 1, 1).expand(-1, -1, 6, 6))
    f2_body = model.ala_head.body(torch.full((2, 1, 6, 6), 0.7))
    for out in (alpha, body, f2_body):
        spread = (out - out[..., :1, :1]).abs().amax()
        assert (spread < 1e-5) == flat, (padding, spread)
