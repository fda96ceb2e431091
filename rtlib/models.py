"""timm backbones with a fresh head, wrapped so that they take images in [0, 1].

Normalization lives inside the model (:class:`NormalizedModel`): attacks, data loaders and users
work in pixel space, and an L-infinity budget of ``eps`` means ``eps`` in [0, 1] pixels. (Given
normalized inputs, torchattacks would silently scale the budget by ``1/std``; DESIGN 5.)

Mixed precision is the model's own business too (:meth:`NormalizedModel.set_precision`): with
bf16 the backbone runs under autocast, but the input, its normalization and the first layer (the
patch embedding) stay in fp32. bf16 has 8 significant bits: near 1.0 its spacing is 1/128, so a
PGD step of 0.25/255 added to an image would mostly round away and the attack would silently
weaken (DESIGN 5). The first layer turns the perturbed pixels into features in full precision.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
from torch import nn

from .config import ConfigError, check_choice

#: ``weights=`` values that mean "download timm's pretrained weights" (the only networked path).
HUB_WEIGHTS = ("hub", "timm")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: Compute precisions a model can run in (``None``/"fp32": plain fp32).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


class _FirstLayerFP32:
    """Mixin for the first layer: always computes in fp32, also inside a bf16 autocast region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))  # fp32 unless the weights are not


def exact_convolutions():
    """A context without TF32 convolutions (cuDNN's default on Ampere and newer GPUs).

    TF32 keeps 10 significant bits, too few for a 0.25/255 step as well; in a ViT the patch
    embedding is the only convolution, so this costs nothing elsewhere. A no-op on the CPU.
    """
    cudnn = torch.backends.cudnn
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                       deterministic=cudnn.deterministic, allow_tf32=False)


class FirstConv2dFP32(_FirstLayerFP32, nn.Conv2d):
    pass


class FirstLinearFP32(_FirstLayerFP32, nn.Linear):
    pass


def keep_first_layer_fp32(backbone: nn.Module, name: str | None) -> str | None:
    """Make the layer ``name`` (timm's ``first_conv``) compute in fp32 under autocast.

    The module's class is swapped for an fp32 subclass in place: parameter names, state dicts
    and peft wrapping are unchanged. Returns the name, or ``None`` when there is no such layer.
    """
    if not name:
        return None
    try:
        layer = backbone.get_submodule(name)
    except AttributeError:
        return None
    for base, fp32 in ((nn.Conv2d, FirstConv2dFP32), (nn.Linear, FirstLinearFP32)):
        if type(layer) is base:
            layer.__class__ = fp32
            return name
    return name if isinstance(layer, _FirstLayerFP32) else None


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1]: uint8 images (how every task stores them) divided by 255,
    float images unchanged (their dtype too: an attack perturbs them as given). The one place
    the ``/ 255`` lives."""
    return images.float() / 255 if images.dtype == torch.uint8 else images


class NormalizedModel(nn.Module):
    """``backbone((x - mean) / std)`` for images ``x`` of shape (N, C, H, W): uint8 in
    [0, 255] (converted by :func:`to_unit`) or float in [0, 1] (what an attack perturbs)."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.backbone = backbone
        # Not persistent: a checkpoint holds the backbone's weights only, exactly as timm's do.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.compute_dtype: torch.dtype | None = None  # None: fp32
        self.fp32_first_layer: str | None = None  # set by build()

    def set_precision(self, precision: str | None) -> "NormalizedModel":
        """``"fp32"`` (or ``None``) or ``"bf16"`` (autocast, first layer kept in fp32)."""
        if precision is None:
            precision = "fp32"
        check_choice("precision", precision, PRECISIONS)
        if precision != "fp32" and self.fp32_first_layer is None:
            raise ConfigError("precision", precision, ["fp32"],
                              "this model's first layer cannot be kept in fp32, so")
        self.compute_dtype = PRECISIONS[precision]
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (to_unit(images).float() - self.mean) / self.std
        if self.compute_dtype is None:
            return self.backbone(x)
        with torch.autocast(x.device.type, dtype=self.compute_dtype):
            # fp32 logits: the loss (and an attack's gradient) start from full precision.
            return self.backbone(x).float()

    @property
    def timm_model(self) -> nn.Module:
        """The underlying timm model, also when a peft wrapper sits in between."""
        get_base = getattr(self.backbone, "get_base_model", None)  # peft.PeftModel
        return get_base() if get_base is not None else self.backbone


def checkpoint_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a weights file, without reading the tensors (safetensors'
    header; a torch file on the meta device, ``weights_only``: a planted file runs nothing).
    A torch file that wraps its tensors (``state_dict``, ``model``) is unwrapped as timm's
    loader does, and a ``module.`` prefix dropped."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = torch.load(path, map_location="meta", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError("not a dictionary of tensors")
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()
            if isinstance(v, torch.Tensor)}


#: Tensors timm resamples when a checkpoint's input size differs (their shapes may differ).
RESAMPLED = ("pos_embed",)


def check_weights_fit(path: str | os.PathLike, backbone: nn.Module, field: str = "weights",
                      shown: str | None = None) -> None:
    """A weights file must provide ``backbone``'s tensors: every name, at its shape (the
    classifier aside, which a fine-tuning run replaces; position embeddings aside, which timm
    resamples). timm loads a file whose head differs non-strictly, so without this check a file
    of unrelated tensors would load nothing and the run would start from random weights."""
    shapes = checkpoint_shapes(path)
    head = backbone.pretrained_cfg.get("classifier") or "head"
    heads = (head,) if isinstance(head, str) else tuple(head)
    expected = {k: tuple(v.shape) for k, v in backbone.state_dict().items()
                if not k.startswith(tuple(f"{h}." for h in heads))}
    given = {k: v for k, v in shapes.items() if not k.startswith(tuple(f"{h}." for h in heads))}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k] != given[k]
                   and not k.endswith(RESAMPLED))
    if missing or unexpected or wrong:
        def few(names):
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            return f"{len(names)} " + "{" + ", ".join(names[:3]) + more + "}"

        shapes_wrong = [f"{k} {given[k]} not {expected[k]}" for k in wrong]
        problems = [f"{few(missing)} missing" if missing else "",
                    f"{few(unexpected)} unexpected" if unexpected else "",
                    f"{few(shapes_wrong)} of another shape" if wrong else ""]
        model = getattr(backbone, "pretrained_cfg", {}).get("architecture", "the model")
        raise ConfigError(field, shown or str(path), f"a checkpoint of {model} (timm's names)",
                          "does not fit the model: tensors " + "; ".join(p for p in problems if p)
                          + "; file")


def _checkpoint_classes(path: Path, head: str) -> int:
    """Number of classes of the checkpoint's head (0 when it has none), from its shapes."""
    shape = checkpoint_shapes(path).get(f"{head}.weight")
    return 0 if shape is None else int(shape[0])


def build(
    name: str,
    num_classes: int,
    weights: str | os.PathLike | None = None,
    img_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **model_kwargs: Any,
) -> NormalizedModel:
    """A timm model ``name`` with a freshly initialized ``num_classes``-way head.

    ``weights``: ``None`` for random initialization; ``"hub"`` (or ``"timm"``) to download timm's
    pretrained weights for ``name`` (the only option that touches the network); or the path of a
    local ``.safetensors`` / ``.pth`` file, loaded through timm's own pretrained-weight path (same
    filtering, position-embedding resampling for another ``img_size``, head dropped).
    ``mean``/``std`` override the model's normalization (default: its pretrained config).
    Extra keyword arguments go to :func:`timm.create_model` (e.g. ``depth``, ``patch_size``).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0].split('_')[0]}*")[:12]
        raise ConfigError("model", name, close or ["any name from timm.list_models()"],
                          "unknown timm model")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError("num_classes", num_classes, "an integer >= 1", "out of range:")
    kwargs = dict(model_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    pretrained, overlay = False, None
    if weights is not None:
        if str(weights) in HUB_WEIGHTS:
            pretrained = True
        else:
            path = Path(weights)
            if path.suffix not in WEIGHT_SUFFIXES:
                raise ConfigError("weights", str(weights),
                                  ["None", *HUB_WEIGHTS, *(f"a *{s} file" for s in WEIGHT_SUFFIXES)],
                                  "unsupported")
            if not path.is_file():
                raise ConfigError("weights", str(weights), "an existing weights file",
                                  "file not found:")
            _check_fit_once(str(path.resolve()), path.stat().st_mtime_ns, name,
                            repr(sorted(kwargs.items())), str(weights))
            head = timm.models.get_pretrained_cfg_value(name, "classifier") or "head"
            # Declaring the checkpoint's own head size lets timm drop it when it differs.
            try:
                overlay = dict(file=str(path), num_classes=_checkpoint_classes(path, head))
            except Exception as err:  # noqa: BLE001 - any unreadable file: name it
                raise ConfigError("weights", str(path), "a .safetensors or .pth checkpoint",
                                  f"unreadable ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200] if str(err) else ''}):"
                                  ) from None
            pretrained = True
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                  pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as err:  # a checkpoint of another architecture
        if overlay is None:
            raise
        raise ConfigError("weights", overlay["file"], f"a checkpoint of {name}",
                          f"does not fit the model ({str(err).splitlines()[0][:200]}):"
                          ) from None
    if pretrained and overlay is not None and overlay["num_classes"] == num_classes:
        model.reset_classifier(num_classes)  # a fresh head even when the sizes happen to match
    cfg = model.pretrained_cfg
    wrapped = NormalizedModel(model, mean or cfg.get("mean", (0.5, 0.5, 0.5)),
                              std or cfg.get("std", (0.5, 0.5, 0.5)))
    wrapped.model_name, wrapped.num_classes = name, num_classes
    wrapped.fp32_first_layer = keep_first_layer_fp32(model, cfg.get("first_conv"))
    wrapped.weights = None if weights is None else str(weights)
    return wrapped


@functools.lru_cache(maxsize=16)
def _check_fit_once(path: str, mtime_ns: int, name: str, kwargs: str, shown: str) -> None:
    """:func:`check_weights_fit` once per file version and architecture (a sweep builds the
    same model many times)."""
    import ast

    try:
        shapes_model = skeleton(name, 2, **dict(ast.literal_eval(kwargs))).backbone
    except Exception:  # noqa: BLE001 - the model's own errors come from create_model below
        return
    check_weights_fit(path, shapes_model, field="weights", shown=shown)


def skeleton(name: str, num_classes: int, **kwargs: Any) -> NormalizedModel:
    """:func:`build` on the meta device: the architecture without memory or initialization,
    enough to count a strategy's parameters or check its hyper-parameters (ViT-B/16 with every
    strategy in about 2 s instead of 16)."""
    with torch.device("meta"):
        return build(name, num_classes, **kwargs)


def classifier_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the classification head's parameters."""
    head = model.timm_model.get_classifier() if isinstance(model, NormalizedModel) \
        else model.get_classifier()
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters count once."""
    params = list(model.parameters())  # parameters() de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- The embedded upstream model -------------------------------------------------------------
# A small ViT for the glyph world (24 px images, 4 px patches: 36 tokens), registered with timm so
# that it is built, and its pretrained weights loaded, exactly like any timm model.
from timm.models import generate_default_cfgs, register_model  # noqa: E402
from timm.models.vision_transformer import _create_vision_transformer  # noqa: E402

from .config import EMBEDDED_MODEL, EMBEDDED_WEIGHTS  # noqa: E402,F401 - the config owns them

default_cfgs = generate_default_cfgs({
    f"{EMBEDDED_MODEL}.rtlib_glyphs": dict(
        num_classes=74, input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        crop_pct=1.0, first_conv="patch_embed.proj", classifier="head",
        license="mit", origin_url="python -m rtlib pretrain"),
})


@register_model
def vit_glyph_p4_24(pretrained: bool = False, **kwargs) -> nn.Module:
    """ViT for 24 px glyphs: width 128, depth 6, 4 heads, 4 px patches (1.2M parameters)."""
    args = dict(img_size=24, patch_size=4, embed_dim=128, depth=6, num_heads=4)
    return _create_vision_transformer(EMBEDDED_MODEL, pretrained=pretrained, **dict(args, **kwargs))
