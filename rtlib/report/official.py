"""How our setting relates to the official code (kyangl/robustness-finetuning), as data.

The book's page "How our setting differs from the official code" is made from this module:
the strategies' trainable counts (from the registry, checked against the ``adapters`` library by
tests/test_official.py), the ``paper`` preset's values with their sources (``config.PRESETS``),
the evaluation schedule (``config.official_should_log``), and :data:`DIFFERENCES`, every known
difference with its kind, reason and expected effect.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

REPOSITORY = "https://github.com/kyangl/robustness-finetuning"

#: Kinds of difference: kept on purpose, forced on us, or a detail where the two may differ.
KINDS = {
    "deliberate": "we differ on purpose (a bug of theirs we do not repeat, or a choice that "
                  "makes numbers comparable); an option reproduces theirs where it matters",
    "forced": "the official choice is not available to us (another library, an unpublished "
              "value)",
    "detail": "an implementation detail that we expect to change numbers by less than their "
              "noise",
}


@dataclass(frozen=True)
class Difference:
    what: str
    official: str
    ours: str
    kind: str
    reason: str
    effect: str

    def __post_init__(self):
        assert self.kind in KINDS, self.kind


DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "DomainNet training domains",
        "trains on every domain unless --ood_filter_train_dataset is set (off by default), so "
        "the 'OOD' test domains are also training domains",
        "trains on the source domain only (ood_train_domains='source'); "
        "ood_train_domains='all' reproduces the official behaviour",
        "deliberate",
        "a domain seen in training is not out of distribution",
        "official OOD accuracy is optimistic: it measures partly in-distribution accuracy. "
        "Run both settings to measure by how much"),
    Difference(
        "Validation split",
        "train_test_split(test_size=0.1) of the training split, unseeded: a different split "
        "every run",
        "the last 10% of the (class-balanced) training images, the same for every run of a "
        "data seed",
        "deliberate",
        "runs of different strategies and seeds are compared on the same images",
        "none on average; less spread between runs"),
    Difference(
        "Model selected at the end",
        "load_best_model_at_end=True: after training, the epoch checkpoint with the best "
        "validation accuracy is restored before the final evaluation",
        "the last step is the final evaluation point; validation accuracy is recorded at every "
        "point, so a checkpoint can be chosen by it afterwards",
        "deliberate",
        "continuous evaluation follows the training trajectory; selecting a checkpoint is an "
        "analysis of that trajectory, not part of it",
        "the official last point can come from an earlier epoch than the last step"),
    Difference(
        "Test images per evaluation",
        "the whole test split at every evaluation point (10,000 images on CIFAR)",
        "a fixed, class-balanced subset (2,000 in the paper preset); only clean-correct images "
        "are attacked (the others cannot be robust)",
        "deliberate",
        "the attack dominates the cost of continuous evaluation; 2,000 images give a 95% "
        "interval of about +-2 points",
        "the same expected values, with a stated binomial uncertainty"),
    Difference(
        "Training accuracy",
        "clean accuracy over the whole training split at every point",
        "over a fixed subset of the training split (train_eval_size images)",
        "detail",
        "cost",
        "noise of about +-1 point at 2,000 images"),
    Difference(
        "Model implementation",
        "Hugging Face's ViTForImageClassification (google/vit-base-patch16-224-in21k), "
        "LayerNorm eps 1e-12",
        "timm's vit_base_patch16_224.orig_in21k (the same weights), LayerNorm eps 1e-6; the "
        "fused qkv is split into q, k, v where LoRA or (IA)^3 needs them",
        "forced",
        "the adapters library does not work on timm models; peft does",
        "none measurable: a test ports weights from timm to Hugging Face's ViT and gets the "
        "same logits within 1e-4, with each strategy applied on both sides"),
    Difference(
        "Strategy implementations",
        "the adapters library (LoRA, (IA)^3, bottleneck adapter, Compacter)",
        "peft (LoRA, (IA)^3) and our own modules (bottleneck adapter, Compacter) with the "
        "official places, compositions, sharing and initializations",
        "forced",
        "the adapters library does not work on timm models",
        "none: trainable counts equal, and the same parameter values give the same logits "
        "(tests/test_official.py)"),
    Difference(
        "Learning rates of the PEFT strategies",
        "not published per strategy; main.py's default is 2e-5, finetune.py's comment "
        "suggests 5e-3 with no weight decay, the README runs LoRA at 5e-4 with decay 0.01",
        "5e-4 with weight decay 0.01 (the README's command) for every PEFT strategy and linear "
        "probing; 2e-5 with a linear decay for full fine-tuning",
        "forced",
        "the paper's own values are not in what we could read",
        "AUPF depends on the learning rate: the rankings could differ from the paper's if its "
        "rates were other"),
    Difference(
        "Length",
        "epochs: 3 by default, 20 in the README's command",
        "20 epochs (the README's command)",
        "forced",
        "the paper does not say which",
        "more epochs reach further into the exploit phase, where robustness falls"),
    Difference(
        "Weight decay exemptions",
        "Hugging Face Trainer: no decay on biases and LayerNorm weights",
        "no decay on any 1-D parameter (biases, norms) and on the position embedding and class "
        "token",
        "detail",
        "the common ViT recipe (timm)",
        "negligible at weight decay 0.01 over a fine-tuning run"),
    Difference(
        "Warm-up shape",
        "Trainer's warm-up starts at a learning rate of 0 at step 0",
        "starts at 1/warmup_steps of the rate at step 0",
        "detail",
        "the first step should move the weights",
        "one step in 800"),
    Difference(
        "PGD step size",
        "alpha = 1/1020, i.e. 0.25/255 for eps = 1/255",
        "step_size_ratio x eps: 0.25/255 at eps = 1/255, and the same ratio at other budgets",
        "detail",
        "one setting serves every budget of an eps sweep",
        "none at the paper's budget"),
    Difference(
        "Precision",
        "fp32 (fp16 commented out), attacks on normalized inputs through torchattacks' "
        "set_normalization_used",
        "fp32 on the CPU; on a GPU bf16 autocast with the input, the first layer and the "
        "perturbation in fp32; normalization inside the model, attacks in pixel space",
        "deliberate",
        "speed on a GPU without weakening the attack (a bf16 perturbation cannot hold a "
        "0.25/255 step)",
        "robust accuracy within 1 point of pure fp32 (tested)"),
)


def differences_frame():
    """:data:`DIFFERENCES` as a DataFrame (one row per difference)."""
    import pandas as pd

    return pd.DataFrame([asdict(d) for d in DIFFERENCES])


def preset_sources(preset: str = "paper"):
    """The preset's values and where each comes from (strategy overrides as ``strategy.field``)."""
    import pandas as pd

    from ..config import PRESETS, eps_label

    def shown(key: str, value) -> str:  # exact, readable values (5e-4, not a rounded 0.001)
        if key == "eps":
            return ", ".join(eps_label(e) for e in value)
        return f"{value:g}" if isinstance(value, float) else str(value)

    spec = PRESETS[preset]
    values = {"tasks": ", ".join(spec["tasks"]), "seeds": ", ".join(map(str, spec["seeds"])),
              **spec["run"], **{f"{s}.{k}": v for s, fields in spec["strategy_overrides"].items()
                                for k, v in fields.items()}}
    sources = dict(spec.get("sources", {}))
    for strategy, grid in spec.get("lr_grid", {}).items():  # rates chosen on validation
        values[f"{strategy}.lr grid"] = ", ".join(f"{v:g}" for v in grid)
        sources[f"{strategy}.lr grid"] = ("ours: the candidates; the one with the best final "
                                          "validation accuracy is used (rtlib.plan)")
    if spec.get("selection"):
        values["lr selection tasks"] = ", ".join(spec["selection"]["tasks"])
        sources["lr selection tasks"] = (f"ours: the sweep's tasks (seed {spec['selection']['seed']}"
                                         "), validation accuracy averaged over them")
    rows = [{"field": k, "value": shown(k, v), "source": sources.get(k, "")}
            for k, v in values.items()]
    return pd.DataFrame(rows).set_index("field")


def schedule_steps(total_steps: int = 30_000) -> str:
    """Our ``official`` evaluation steps for a run of ``total_steps`` (tests/test_setting.py
    checks them against the official ``should_log``, transcribed verbatim)."""
    from ..config import parse_schedule

    return ", ".join(f"{s:,}" for s in parse_schedule("official", total_steps))


def strategy_table(model, names=None):
    """The strategies on ``model`` (:func:`rtlib.strategies.summary`) as a DataFrame indexed
    by strategy, with the official counts beside ours, for the book."""
    import pandas as pd

    from ..strategies import OFFICIAL_COUNT_MODEL, summary

    frame = pd.DataFrame(summary(model, names)).set_index("strategy")
    # The official counts are for ViT-B/16 with a 10-class head: compared on that model only.
    comparable = (getattr(model, "model_name", "").startswith(OFFICIAL_COUNT_MODEL)
                  and getattr(model, "num_classes", None) == 10)
    frame["equals official count"] = [
        bool(t == o) if comparable and not pd.isna(o) else None
        for t, o in zip(frame["trainable"], frame["official_trainable"])]
    return frame.rename(columns={"paper_percent": "paper %", "in_paper": "in paper",
                                 "official_trainable": "official count"})[
        ["title", "information", "mechanism", "adapts", "trainable", "total", "percent",
         "paper %", "official count", "equals official count", "in paper"]]
