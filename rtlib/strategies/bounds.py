"""The strategies' numeric hyper-parameters and their bounds, in one light place (no torch):
a value out of range is answered at the door at once (``rtlib.preflight.check_names``), and
the strategies' own validators check the same bounds when they resolve a model."""
from __future__ import annotations

from typing import Any, Mapping

from ..config import check_float, check_int

#: The largest rank a low-rank strategy takes (ViT-g's width is 1,536; a rank beyond the
#: model's width adds nothing a full update lacks).
MAX_RANK = 4096
_LORA = {"rank": dict(kind=int, minimum=1, maximum=MAX_RANK),
         # alpha / rank scales the update: beyond a few thousand it only diverges (1e30 trained
         # to chance and looked like a finished run)
         "alpha": dict(kind=float, low=0, low_open=True, high=4096),
         "dropout": dict(kind=float, low=0, high=1, high_open=True)}
_BOTTLENECK = {"reduction_factor": dict(kind=float, low=0, low_open=True, high=4096)}
BOUNDS: dict[str, dict[str, dict]] = {
    "lora": _LORA, "dora": _LORA, "adapter": _BOTTLENECK,
    "compacter": {**_BOTTLENECK, "n": dict(kind=int, minimum=1, maximum=64),
                  "rank": dict(kind=int, minimum=1, maximum=MAX_RANK),
                  "rule_init_std": dict(kind=float, low=0, low_open=True, high=1)},
}


def check(strategy: str, name: str, value: Any) -> Any:
    """``value`` of hyper-parameter ``name`` within its bounds (``strategy.name`` in errors)."""
    spec = dict(BOUNDS[strategy][name])
    checker = check_int if spec.pop("kind") is int else check_float
    return checker(f"{strategy}.{name}", value, **spec)


def check_given(strategy: str, hparams: Mapping[str, Any]) -> None:
    """The bounded hyper-parameters among ``hparams`` (names are the validators' to check)."""
    for name, value in (hparams or {}).items():
        if name in BOUNDS.get(strategy, {}):
            check(strategy, name, value)
