import pytest
import torch

from vfmxai.backbones import add_lora, load_backbone, lora_state_dict
from vfmxai.errors import VfmxaiError


def test_hidden_states_are_block_inputs_and_outputs():
    backbone = load_backbone("tiny")
    images = torch.rand(2, 3, 32, 32)
    states = backbone.hidden_states(images)
    assert len(states) == backbone.num_blocks + 1
    assert all(s.shape == (2, 1 + 16, 32) for s in states)
    captured = []
    handle = backbone.blocks[0].register_forward_pre_hook(lambda m, args, kwargs: captured.append(args[0]),
                                                          with_kwargs=True)
    backbone.hidden_states(images)
    handle.remove()
    torch.testing.assert_close(captured[0], states[0])
    assert backbone.patch_grid(states[-1]).shape == (2, 32, 4, 4)


def test_position_embeddings_interpolate_to_larger_inputs():
    backbone = load_backbone("tiny", image_size=48)
    states = backbone.hidden_states(torch.rand(1, 3, 48, 48))
    assert states[-1].shape == (1, 1 + 36, 32) and backbone.grid_shape() == (6, 6)


def test_lora_trains_only_lora_and_starts_as_identity():
    backbone = load_backbone("tiny")
    images = torch.rand(2, 3, 32, 32)
    before = backbone.hidden_states(images)[-1]
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    add_lora(backbone, rank=2, blocks=[1, 3])
    torch.testing.assert_close(backbone.hidden_states(images)[-1], before)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[3] for n in trainable} == {"1", "3"}
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        backbone.hidden_states(images)[-1].pow(2).mean().backward()
        optimizer.step()
    after = backbone.state_dict()
    for key, value in frozen.items():
        base_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after.get(key, after.get(base_key)), value), key
    assert not torch.allclose(backbone.hidden_states(images)[-1], before)
    assert len(lora_state_dict(backbone)) == 2 * 4 * 2


def test_patch_grid_puts_each_patch_token_at_its_row_and_column():
    backbone = load_backbone("tiny")  # patch 8, one class token
    assert backbone.grid_shape((40, 24)) == (5, 3)
    tokens = torch.arange(2 * (1 + 15) * 4, dtype=torch.float32).view(2, 16, 4)  # a 40x24 image's tokens
    grid = backbone.patch_grid(tokens, (40, 24))
    assert grid.shape == (2, 4, 5, 3)
    for row, col in ((0, 0), (0, 2), (4, 1)):
        torch.testing.assert_close(grid[:, :, row, col], tokens[:, 1 + row * 3 + col])
    scores = tokens[..., 0]
    torch.testing.assert_close(backbone.patch_grid(scores, (40, 24)), grid[:, 0])
    torch.testing.assert_close(backbone.patch_grid(tokens[:, :10]), tokens[:, 1:10].transpose(1, 2).reshape(2, 4, 3, 3))
    with pytest.raises(VfmxaiError, match="15 patch tokens do not form the 4x4 grid"):
        backbone.patch_grid(tokens, (32, 32))
    with pytest.raises(VfmxaiError, match="do not form a square"):
        backbone.patch_grid(tokens)


def test_missing_weights_name_the_id_the_cache_and_the_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(VfmxaiError) as err:
        load_backbone("openai/clip-vit-base-patch16")
    message = str(err.value)
    assert "openai/clip-vit-base-patch16" in message and str(tmp_path) in message and "--backbone" in message
    assert "\n" not in message


def test_directory_backbone_round_trip(tmp_path):
    backbone = load_backbone("tiny")
    backbone.model.save_pretrained(tmp_path)
    again = load_backbone(str(tmp_path), image_size=32)
    images = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(again.hidden_states(images)[-1], backbone.hidden_states(images)[-1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VfmxaiError, match="no config.json"):
        load_backbone(str(tmp_path / "empty"))
    with pytest.raises(VfmxaiError, match="not a directory"):
        load_backbone(str(tmp_path / "nothing_here"))
