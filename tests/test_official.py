"""Our strategies against the official code's, built with the real ``adapters`` library.

The official code (kyangl/robustness-finetuning, scripts/build.py and configs/) builds every
strategy with ``adapters`` on Hugging Face's ViT. Here the same configurations are built on a
randomly initialised Hugging Face ViT (no download) and compared with ours on timm's ViT:
trainable counts at ViT-B/16 scale, and, on a tiny ViT whose weights are ported from timm to
Hugging Face, the very function each strategy computes.
"""
import copy
import re

import pytest
import torch

from rtlib import models, strategies

adapters = pytest.importorskip("adapters")
from adapters import BnConfig, CompacterConfig, IA3Config, LoRAConfig  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

# The official configs/*.yml, verbatim (config0_lora, config0_ia3, config0_bn_all; Compacter is
# CompacterConfig() with its defaults, build.py).
OFFICIAL = {
    "lora": lambda: LoRAConfig(selfattn_lora=True, attn_matrices=["k", "v", "q"],
                               intermediate_lora=True, output_lora=True, r=8, alpha=8,
                               composition_mode="add"),
    "ia3": lambda: IA3Config(selfattn_lora=True, attn_matrices=["k", "v"],
                             intermediate_lora=True, output_lora=True, r=1, alpha=1,
                             composition_mode="scale"),
    "adapter": lambda: BnConfig(output_adapter=True, mh_adapter=True, non_linearity="gelu",
                                reduction_factor=8),
    "compacter": lambda: CompacterConfig(),
}


def _official_trainable(hf_model, name: str) -> int:
    """Trainable parameters of the official build (scripts/build.py) of strategy ``name``."""
    params = dict(hf_model.named_parameters())
    if name == "full":
        return sum(p.numel() for p in params.values())
    if name == "linear_probe":  # "head" in the name: ViTForImageClassification calls it classifier
        return sum(p.numel() for n, p in params.items() if n.startswith("classifier."))
    if name == "bitfit":
        return sum(p.numel() for n, p in params.items()
                   if "bias" in n or n.startswith("classifier."))
    hf_model.add_adapter(name, config=OFFICIAL[name]())
    hf_model.train_adapter(name)  # freezes the model but the adapter (and the head)
    count = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
    hf_model.delete_adapter(name)
    return count


def _hf_vit(**overrides) -> ViTForImageClassification:
    # ViTForImageClassification has no pooler: the official counts exclude it.
    model = ViTForImageClassification(ViTConfig(**{"num_labels": 10, **overrides}))
    adapters.init(model)
    return model


def test_trainable_counts_equal_the_official_configuration_on_vit_b16():
    torch.manual_seed(0)
    hf = _hf_vit()  # ViT-B/16 at 224 px, random weights
    ours = {r["strategy"]: r["trainable"] for r in strategies.summary(
        models.skeleton("vit_base_patch16_224", 10), strategies.PAPER_STRATEGIES)}
    official = {name: _official_trainable(hf, name) for name in strategies.PAPER_STRATEGIES}
    assert ours == official
    # ... and the registry's record of it, which the book shows, is that count.
    assert official == {n: strategies.get(n).official_trainable for n in official}


# -- the same function ------------------------------------------------------------------------
TINY_HF = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=512, image_size=32, patch_size=8, num_labels=5,
               layer_norm_eps=1e-6, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _tiny_timm():
    torch.manual_seed(0)
    return models.build("vit_tiny_patch16_224", 5, img_size=32, patch_size=8, depth=2,
                        embed_dim=128, num_heads=4)


def _port_base(timm_model, hf) -> None:
    """Copy a timm ViT's weights into a Hugging Face ViT with the same shape."""
    sd = timm_model.backbone.state_dict()
    out = {"vit.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "vit.embeddings.cls_token": sd["cls_token"],
           "vit.embeddings.position_embeddings": sd["pos_embed"],
           "vit.layernorm.weight": sd["norm.weight"], "vit.layernorm.bias": sd["norm.bias"],
           "classifier.weight": sd["head.weight"], "classifier.bias": sd["head.bias"]}
    for i in range(len(timm_model.backbone.blocks)):
        src, dst = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for part, chunk in zip(("query", "key", "value"),
                                   sd[src + f"attn.qkv.{kind}"].chunk(3)):
                out[dst + f"attention.attention.{part}.{kind}"] = chunk
            for ours, theirs in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                                 ("attn.proj", "attention.output.dense"),
                                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
                out[dst + f"{theirs}.{kind}"] = sd[src + f"{ours}.{kind}"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    # (prompt_tuning holds a second reference to the patch embedding, loaded above)
    assert not unexpected and not [k for k in missing if "prompt_tuning" not in k]


_PART = {"q": "attention.attention.query", "k": "attention.attention.key",
         "v": "attention.attention.value", "fc1": "intermediate.dense", "fc2": "output.dense"}
_POSITION = {"attn": "attention_adapters", "mlp": "output.output_adapters"}


def _official_name(ours: str, name: str) -> str:
    """The ``adapters`` parameter that corresponds to our trainable parameter ``ours``."""
    if m := re.search(r"blocks\.(\d+)\..*\b(q|k|v|fc1|fc2)\.(lora_A|lora_B|ia3_l)\.", ours):
        i, part, kind = m.groups()
        kind = "lora_B" if kind == "ia3_l" else kind
        return f"vit.encoder.layer.{i}.{_PART[part]}.loras.{name}.{kind}"
    if m := re.search(r"blocks\.(\d+)\.(attn|mlp)\.adapter\.(down|up)\.(weight|bias|s|t)$", ours):
        i, pos, direction, kind = m.groups()
        layer = "adapter_down.0" if direction == "down" else "adapter_up"
        kind = {"s": "W_left", "t": "W_right"}.get(kind, kind)
        if name == "compacter" and kind == "bias":
            kind = "b"
        return f"vit.encoder.layer.{i}.{_POSITION[pos]}.adapters.{name}.{layer}.{kind}"
    if ours.endswith("compacter_rule.rule"):
        return f"vit.shared_parameters.{name}.phm_rule"
    raise AssertionError(f"no official counterpart for {ours}")


@pytest.mark.parametrize("name", ["lora", "ia3", "adapter", "compacter"])
def test_each_strategy_computes_the_official_function(name):
    """With the same (random, trained-looking) values in the injected parameters, our model and
    the official one give the same logits: same places, same composition, same sharing."""
    base = _tiny_timm()
    hf = _hf_vit(**TINY_HF)
    _port_base(base, hf)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hf.eval()
    with torch.no_grad():  # the ported base models agree before any strategy is applied
        assert torch.allclose(base.eval()(images), hf(pixel_values=(images - 0.5) / 0.5).logits,
                              atol=1e-4)

    ours = strategies.apply(copy.deepcopy(base), name).eval()
    hf.add_adapter(name, config=OFFICIAL[name]())
    hf.set_active_adapters(name)
    theirs = dict(hf.named_parameters())
    injected = [(n, p) for n, p in ours.named_parameters()
                if p.requires_grad and ".head." not in n]
    official = {n for n, p in theirs.items() if f".{name}." in n or n.endswith(f".{name}.phm_rule")}
    assert {_official_name(n, name) for n, _ in injected} == official  # one-to-one
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in injected:  # values far from the initialization, so every path matters
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "ia3" in n else 0.0))
            theirs[_official_name(n, name)].copy_(p.reshape(theirs[_official_name(n, name)].shape))
        ours_logits = ours(images)
        official_logits = hf(pixel_values=(images - 0.5) / 0.5).logits
        assert not torch.allclose(ours_logits, base(images), atol=1e-3)  # the strategy acts
        assert torch.allclose(ours_logits, official_logits, atol=1e-4), \
            (ours_logits - official_logits).abs().max()


@pytest.mark.parametrize("name", ["lora", "ia3", "adapter", "compacter"])
def test_initialization_matches_the_official_distribution(name):
    """Same initial values in law: identical at step 0 where the official is (LoRA's B = 0,
    IA3's ones), and the same spread where it is random (bert N(0, 0.02), Xavier-normal
    factors, the shared rule N(0, 1e-4))."""
    torch.manual_seed(0)
    ours = strategies.apply(models.build("vit_base_patch16_224", 10), name)
    hf = _hf_vit()
    hf.add_adapter(name, config=OFFICIAL[name]())
    theirs = dict(hf.named_parameters())
    for n, p in ours.named_parameters():
        if not p.requires_grad or ".head." in n:
            continue
        q = theirs[_official_name(n, name)]
        assert p.numel() == q.numel(), n
        if q.std() == 0 or p.numel() < 64:  # constant (zeros, ones) or too few to compare
            assert torch.equal(p.flatten(), q.detach().flatten()) or p.numel() < 64, n
        else:
            assert p.mean().item() == pytest.approx(q.mean().item(), abs=3 * q.std().item()), n
            # Two sample standard deviations of n draws differ by ~sqrt(1/n) relative: 3 sigma.
            tolerance = 0.05 + 3 * (1 / p.numel()) ** 0.5
            assert p.std().item() == pytest.approx(q.std().item(), rel=tolerance), n
