import copy
import json

import pytest
import torch
import torch.nn.functional as F

from rtlib import cli, models, strategies
from rtlib.config import ConfigError

from .conftest import build_tiny

D, DEPTH, HEAD_SIZE = 64, 2, 64 * 5 + 5  # the tiny model of conftest


def _is_head(name):
    return name.endswith("head.weight") or name.endswith("head.bias")


# Which parameter names must train, written independently of the implementation ...
INTENDED = {
    "full": lambda n: True,
    "linear_probe": _is_head,
    "bitfit": lambda n: n.endswith("bias") or _is_head(n),
    "lora": lambda n: ("lora_A" in n or "lora_B" in n) or _is_head(n),
    "dora": lambda n: ("lora_A" in n or "lora_B" in n or "lora_magnitude" in n) or _is_head(n),
    "ia3": lambda n: "ia3_l" in n or _is_head(n),
    "adapter": lambda n: ".adapter." in n or _is_head(n),
    "compacter": lambda n: ".adapter." in n or "compacter_rule" in n or _is_head(n),
}
# ... and how many there are, counted by hand for width 64, depth 2, MLP 256, rank 8.
EXPECTED_COUNT = {
    "linear_probe": HEAD_SIZE,
    # separate q, k, v (64 -> 64 each), fc1 (64 -> 256), fc2 (256 -> 64)
    "lora": DEPTH * 8 * (3 * (D + D) + (D + 4 * D) + (4 * D + D)) + HEAD_SIZE,
    "dora": DEPTH * (8 * 16 * D + 3 * D + 4 * D + D) + HEAD_SIZE,
    "ia3": DEPTH * (D + D + 4 * D + D) + HEAD_SIZE,  # outputs of k, v, fc1 and fc2
    "adapter": DEPTH * 2 * ((D * 8 + 8) + (8 * D + D)) + HEAD_SIZE,  # width 64/8 = 8
    # width ceil(64/32 / 4) * 4 = 4; down: s 4x16x1, t 4x1x1, bias 4; up: s 4x1x1, t 4x1x16,
    # bias 64; one 4x4x4 rule shared by every layer.
    "compacter": DEPTH * 2 * ((64 + 4 + 4) + (4 + 64 + 64)) + 64 + HEAD_SIZE,
}
ALL = strategies.names()


def test_registry_has_the_papers_seven_and_dora_as_extension():
    assert strategies.PAPER_STRATEGIES == ("full", "linear_probe", "bitfit", "lora", "ia3",
                                           "adapter", "compacter")
    assert strategies.get("dora").in_paper is False
    for name in ALL:
        s = strategies.get(name)
        assert s.information in strategies.INFORMATION and s.mechanism in strategies.MECHANISMS


@pytest.mark.parametrize("name", ALL)
def test_exactly_the_intended_parameters_train(name):
    model = strategies.apply(build_tiny(), name)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    intended = {n for n in params if INTENDED[name](n)}
    assert trainable == intended
    assert sum(_is_head(n) for n in trainable) == 2  # the head trains under every strategy
    if name in EXPECTED_COUNT:
        assert models.count_parameters(model)[0] == EXPECTED_COUNT[name]


@pytest.mark.parametrize("name", ALL)
def test_adapted_model_starts_where_the_official_one_does(name, batch):
    """The official initializations (tests/test_official.py): LoRA's B and (IA)^3's vectors
    make the adapted model start exactly as the base model (``starts_as_identity``, which
    weight interpolation relies on); the bottleneck adapter's "bert" initialization does not;
    Compacter's rule of scale 1e-4 starts it within a whisker of the base model."""
    base = build_tiny().eval()
    adapted = strategies.apply(copy.deepcopy(base), name).eval()
    with torch.no_grad():
        gap = (adapted(batch[0]) - base(batch[0])).abs().max().item()
    if strategies.get(name).starts_as_identity:
        assert gap <= 1e-5
    elif name == "compacter":
        assert 0 < gap < 1e-3
    else:
        assert gap > 1e-3


def _train(model, batch, steps=8, lr=3e-3):
    images, labels = batch
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(images), labels).item())
    return losses


@pytest.mark.parametrize("name", ALL)
def test_a_few_steps_lower_the_loss_and_move_every_trainable_tensor(name, batch):
    model = strategies.apply(build_tiny(), name)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = _train(model, batch)
    assert losses[-1] < losses[0] - 0.05, losses
    after = dict(model.named_parameters())
    unmoved = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert not unmoved
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize("name", ALL)
def test_save_then_load_gives_identical_outputs(name, batch, tmp_path):
    base = build_tiny()
    fresh = copy.deepcopy(base)
    model = strategies.apply(base, name)
    _train(model, batch, steps=3)
    path = strategies.save(model, tmp_path / f"{name}.safetensors")
    loaded = strategies.load(fresh, path)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(batch[0]), loaded(batch[0]))
    assert loaded.strategy == name and loaded.strategy_hparams == model.strategy_hparams


def test_compacter_weight_is_a_sum_of_kronecker_products():
    model = strategies.apply(build_tiny(), "compacter")
    phm = model.backbone.blocks[0].attn.adapter.down
    blocks = phm.s @ phm.t
    expected = sum(torch.kron(phm.rules[i], blocks[i]) for i in range(phm.n))
    assert torch.allclose(phm.weight(), expected, atol=1e-6)
    # The rule is shared: one tensor for every projection of the network, down and up.
    second = model.backbone.blocks[1].mlp.adapter
    for other in (second.down, second.up):
        assert other.rules is phm.rules
    assert sum("compacter_rule" in n for n, _ in model.named_parameters()) == 1


def test_separate_q_k_v_compute_the_fused_projection_and_train_independently(batch):
    """LoRA on q, k, v: the split is the same function as timm's fused qkv, and each of the
    three updates only changes its own third of the attention input."""
    base = build_tiny().eval()
    model = strategies.apply(copy.deepcopy(base), "lora").eval()
    attn = model.backbone.base_model.model.blocks[0].attn
    fused = base.backbone.blocks[0].attn.qkv
    tokens = torch.randn(2, 5, D)
    with torch.no_grad():
        assert torch.allclose(attn.qkv(tokens), fused(tokens), atol=1e-6)
        for i, part in enumerate("qkv"):
            before = attn.qkv(tokens)
            getattr(attn.qkv, part).lora_B["default"].weight.normal_()
            moved = (attn.qkv(tokens) - before).abs().amax(dim=(0, 1)).reshape(3, D).amax(1)
            assert moved[i] > 0 and moved.sum() == moved[i], (part, moved)
    # A fused timm state dict still loads into the split model (sliced on the way in).
    copy_ = strategies.apply(build_tiny(seed=3), "lora")
    copy_.backbone.base_model.model.load_state_dict(base.backbone.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(copy_.backbone.base_model.model.blocks[0].attn.qkv.k.base_layer.weight,
                           fused.weight[D:2 * D])


def test_ia3_scales_layer_outputs_so_zero_on_fc2_removes_the_mlp_branch(batch):
    model = strategies.apply(build_tiny(), "ia3").eval()
    block = model.backbone.base_model.model.blocks[0]
    tokens = torch.randn(2, 5, D)
    with torch.no_grad():
        block.mlp.fc2.ia3_l["default"].zero_()
        assert torch.equal(block.mlp(tokens), torch.zeros(2, 5, D))  # output (bias too) scaled
        block.mlp.fc2.ia3_l["default"].fill_(1.0)
        # fc1 is scaled before the GELU: 0 there gives GELU(0) = 0 into fc2, so only fc2's bias.
        block.mlp.fc1.ia3_l["default"].zero_()
        assert torch.allclose(block.mlp(tokens), block.mlp.fc2.base_layer.bias.expand(2, 5, D))
        # The query is not scaled: only the keys and values are.
        assert not hasattr(block.attn.qkv.q, "ia3_l")


def test_hyperparameters_change_the_model():
    small = strategies.apply(build_tiny(), "lora", rank=2, target_modules=["qkv"])
    assert models.count_parameters(small)[0] == DEPTH * 2 * (D + 3 * D) + HEAD_SIZE
    wide = strategies.apply(build_tiny(), "adapter", reduction_factor=4, positions=["mlp"])
    assert models.count_parameters(wide)[0] == DEPTH * ((D * 16 + 16) + (16 * D + D)) + HEAD_SIZE


@pytest.mark.parametrize("name,hparams,field,allowed", [
    ("lorra", {}, "strategy", "adapter, bitfit, compacter, dora, full, ia3, linear_probe, lora"),
    ("lora", {"rank": 0}, "lora.rank", "an integer in [1, 4096]"),
    ("lora", {"rank": 2.5}, "lora.rank", "an integer in [1, 4096]"),
    ("lora", {"target_modules": ["qkv", "query"]}, "lora.target_modules",
     "fc1, fc2, k, proj, q, qkv, v"),
    ("lora", {"target_modules": ["qkv", "q"]}, "lora.target_modules", "either qkv or any of q"),
    ("ia3", {"target_modules": ["v_proj"]}, "ia3.target_modules", "fc1, fc2, k, proj, q, qkv, v"),
    ("ia3", {"feedforward_modules": ["proj"]}, "ia3.feedforward_modules", "fc1, fc2, k, v"),
    ("adapter", {"reduction_factor": 0}, "adapter.reduction_factor", "a number in (0, 4096]"),
    ("adapter", {"reduction_factor": -8}, "adapter.reduction_factor", "a number in (0, 4096]"),
    ("adapter", {"positions": ["ffn"]}, "adapter.positions", "attn, mlp"),
    ("compacter", {"reduction_factor": 0}, "compacter.reduction_factor", "a number in (0, 4096]"),
    ("compacter", {"n": 3}, "compacter.n", "1, 2, 4, 8, 16, 32, 64"),
    ("bitfit", {"rank": 8}, "bitfit.rank", "(none: this strategy has no hyper-parameters)"),
    ("lora", {"rnak": 8}, "lora.rnak", "alpha, dropout, rank, target_modules"),
])
def test_bad_input_names_the_field_and_the_allowed_values(name, hparams, field, allowed):
    model = build_tiny()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError) as err:
        strategies.apply(model, name, **hparams)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
    assert f"allowed: {allowed}" in str(err.value)
    # Nothing was touched: the model can still be prepared.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not getattr(model, "strategy", None)


def test_cli_strategies_json(capsys):
    assert cli.main(["strategies", "--model", "vit_tiny_patch16_224", "--img-size", "32",
                     "--num-classes", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in rows] == ALL
    for r in rows:
        assert {"strategy", "trainable", "total", "percent", "information", "mechanism"} <= set(r)
        assert r["percent"] == pytest.approx(100 * r["trainable"] / r["total"])
    assert cli.main(["strategies", "--model", "vit_tiny_patch16_224", "--img-size", "32"]) == 0
    table = capsys.readouterr().out
    assert "compacter" in table and "ext." in table


def test_cli_rejects_bad_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["strategies", "--num-classes", "0"])
    assert exit_.value.code == 2
    assert "--num-classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["strategies", "--model", "vit_nonsense"])
    assert exit_.value.code == 2 and "model: unknown timm model" in capsys.readouterr().err


def test_module_help_lists_every_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rtlib", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "strategies" in out and "book" in out
    out = subprocess.run([sys.executable, "-m", "rtlib", "strategies", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--model", "--num-classes", "--img-size", "--json"):
        assert option in out


def test_a_skeleton_on_the_meta_device_counts_like_the_built_model():
    """The book counts ViT-B/16's parameters on a skeleton (no memory, no initialization)."""
    built = strategies.summary(models.build("vit_glyph_p4_24", 10))
    skeleton = models.skeleton("vit_glyph_p4_24", 10)
    assert next(skeleton.parameters()).is_meta
    assert strategies.summary(skeleton) == built


def test_every_help_text_reads_as_written():
    """A literal '%%' or an unfilled '%(' in a --help page is a formatting slip."""
    import argparse

    from rtlib import cli

    parser = cli.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "%%" not in text and "%(" not in text, name
