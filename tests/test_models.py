import pytest
import torch
from safetensors.torch import save_file

from rtlib import models
from rtlib.config import ConfigError

from .conftest import TINY, build_tiny


def test_output_shape_and_normalization_inside(tiny):
    x = torch.rand(4, 3, 32, 32)
    tiny.eval()
    out = tiny(x)
    assert out.shape == (4, 5)
    # The wrapper applies the model's own normalization (mean = std = 0.5 for timm's ViTs).
    assert torch.allclose(out, tiny.backbone((x - 0.5) / 0.5), atol=1e-6)
    assert tiny.mean.flatten().tolist() == [0.5] * 3 and tiny.std.flatten().tolist() == [0.5] * 3


def test_mean_std_override():
    model = build_tiny(mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 4.0))
    model.eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1)
    assert torch.allclose(model(x), model.backbone((x - mean) / std), atol=1e-6)


def _body(state):
    return {k: v for k, v in state.items() if not k.startswith("head.")}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_through_timm_with_a_fresh_head(tmp_path, suffix):
    source = build_tiny(num_classes=7, seed=3)
    state = {k: v.contiguous() for k, v in source.backbone.state_dict().items()}
    path = tmp_path / f"upstream{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    kwargs = {k: v for k, v in TINY.items() if k != "name"}
    loaded = models.build(TINY["name"], 5, weights=path, **kwargs)
    got = loaded.backbone.state_dict()
    for k, v in _body(state).items():
        assert torch.equal(got[k], v), k
    assert got["head.weight"].shape == (5, 64)
    # Same number of classes as the checkpoint: the head is still a fresh one.
    same = models.build(TINY["name"], 7, weights=path, **kwargs)
    assert not torch.equal(same.backbone.state_dict()["head.weight"], state["head.weight"])
    # A random-weights model differs from the loaded one, so the comparison above means something.
    assert not torch.equal(build_tiny(seed=9).backbone.state_dict()["blocks.0.attn.qkv.weight"],
                           state["blocks.0.attn.qkv.weight"])


def test_local_weights_at_another_resolution(tmp_path):
    source = build_tiny(seed=3)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.backbone.state_dict().items()}, str(path))
    kwargs = {k: v for k, v in TINY.items() if k not in ("name", "img_size")}
    bigger = models.build(TINY["name"], 5, weights=path, img_size=48, **kwargs)
    assert bigger.backbone.pos_embed.shape[1] == 1 + 36  # resampled from 16 patches to 36
    assert bigger(torch.rand(1, 3, 48, 48)).shape == (1, 5)


def test_bad_model_inputs_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="^model: unknown timm model 'vit_nonsense'"):
        models.build("vit_nonsense", 10)
    with pytest.raises(ConfigError, match="^num_classes"):
        models.build(TINY["name"], 0)
    with pytest.raises(ConfigError, match="^weights: file not found"):
        models.build(TINY["name"], 10, weights=tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="^weights: unsupported .*allowed: None, hub, timm"):
        models.build(TINY["name"], 10, weights=tmp_path / "weights.txt")


def test_count_parameters(tiny):
    trainable, total = models.count_parameters(tiny)
    assert trainable == total == sum(p.numel() for p in tiny.backbone.parameters())
    assert models.classifier_names(tiny) == ["backbone.head.weight", "backbone.head.bias"]
