"""Pre-training the embedded upstream model: a checkpoint that records how it was made, a second
stage that continues from it, and what the methods chapter reads from them."""
import pytest

from rtlib import models, pretrain
from rtlib.config import PretrainConfig

TINY = dict(steps=4, batch_size=16, train_images=64, test_images=32, warmup_steps=1,
            checkpoint_every=2, threads=1)


def test_two_stages_make_one_learning_curve(tmp_path):
    first = tmp_path / "stage1.safetensors"
    meta1 = pretrain.pretrain(PretrainConfig(**TINY), first, progress=False)
    assert meta1["command"].startswith("python -m rtlib pretrain --task upstream --steps 4")
    assert [h["step"] for h in meta1["history"]] == [2, 4]
    second = tmp_path / "stage2.safetensors"
    meta2 = pretrain.pretrain(PretrainConfig(**{**TINY, "steps": 2, "init": str(first)}), second,
                              progress=False)
    assert meta2["init"]["command"] == meta1["command"]
    assert meta2["images_seen"] == meta1["images_seen"] + 2 * 16
    curve = pretrain.learning_curve(pretrain.checkpoint_metadata(second))
    assert curve["stage"].tolist() == [1, 1, 2] and curve["step"].tolist() == [2, 4, 6]
    assert curve["accuracy"].between(0, 1).all()
    # The checkpoint loads like pretrained weights, and is scored per upstream domain.
    models.build(models.EMBEDDED_MODEL, 10, weights=str(second))
    by_domain = pretrain.accuracy_by_domain(second, images=16)
    assert set(by_domain) == {"print", "texture", "clutter"}
    assert all(0 <= a <= 1 for a in by_domain.values())


def test_adversarial_pretraining_records_its_budget_and_robust_accuracy(tmp_path):
    out = tmp_path / "robust.safetensors"
    meta = pretrain.pretrain(PretrainConfig(**{**TINY, "steps": 2, "adv_eps": 2 / 255,
                                               "adv_steps": 2}), out, progress=False)
    assert meta["config"]["adv_eps"] == 2 / 255 and "--adv-eps 0.00784" in meta["command"]
    assert 0 <= meta["upstream_robust_accuracy"] <= 1
    standard = pretrain.pretrain(PretrainConfig(**{**TINY, "steps": 2}), tmp_path / "s.st",
                                 progress=False)
    assert "upstream_robust_accuracy" not in standard
    # the same seed and data: only the adversarial examples differ, so the weights do
    from safetensors.torch import load_file

    a, b = load_file(out), load_file(tmp_path / "s.st")
    assert any(not (a[k] == b[k]).all() for k in a)


def test_adversarial_budget_is_checked_and_parsed_like_eps():
    import pytest

    from rtlib import cli
    from rtlib.config import ConfigError

    with pytest.raises(ConfigError, match="^adv_eps"):
        PretrainConfig(adv_eps=2.0).check()
    args = cli.build_parser().parse_args(["pretrain", "--adv-eps", "2/255"])
    assert args.adv_eps == 2 / 255


def test_upstream_robustness_is_kept_in_the_store_and_read_back(tmp_path):
    """The methods chapter's comparison of the two upstream models: computed once per
    checkpoint and setting, then read (a rebuild of the book attacks nothing)."""
    import pandas as pd

    from rtlib import config

    store_dir = tmp_path / "store"
    first = pretrain.upstream_robustness(config.EMBEDDED_WEIGHTS, store_dir, images=16, steps=2)
    assert 0 <= first["robust"] <= first["clean"] <= 1  # only correct images can be robust
    [kept] = (store_dir / "upstream").glob("*.parquet")
    # what is stored is what is read: plant another number and it comes back
    pd.read_parquet(kept).assign(robust=0.123).to_parquet(kept, index=False)
    again = pretrain.upstream_robustness(config.EMBEDDED_WEIGHTS, store_dir, images=16, steps=2)
    assert again == {"clean": first["clean"], "robust": 0.123}
    # another budget or another checkpoint is another entry, scored on the same images
    pretrain.upstream_robustness(config.EMBEDDED_WEIGHTS, store_dir, images=16, steps=2,
                                 eps=4 / 255)
    robust = pretrain.upstream_robustness(config.ROBUST_WEIGHTS, store_dir, images=16, steps=2)
    assert len(list((store_dir / "upstream").glob("*.parquet"))) == 3
    assert robust != first


def test_the_upstream_table_scores_both_models_as_the_presets_runs_are_attacked(tmp_path):
    table = pretrain.upstream_table("smoke", tmp_path)
    assert table.index.tolist() == ["standard", "robust"]
    assert table.attrs["attack"] == "PGD-3 at 2/255 on 64 upstream test images"
    assert (table["robust"] <= table["clean"]).all()
    # the robust model is the more robust one (a fact about the committed checkpoints)
    assert table.loc["robust", "robust"] > table.loc["standard", "robust"]
    assert len(list((tmp_path / "upstream").glob("*.parquet"))) == 2


def test_resumed_pretraining_is_bit_identical_to_uninterrupted(tmp_path):
    import torch
    from safetensors.torch import load_file

    config = PretrainConfig(task="upstream2", steps=6, batch_size=8, train_images=64,
                            test_images=16, checkpoint_every=2, warmup_steps=2, seed=1)
    whole = tmp_path / "whole.safetensors"
    pretrain.pretrain(config, whole, progress=False)
    parts = tmp_path / "parts.safetensors"
    assert pretrain.pretrain(config, parts, progress=False, stop_at=2) is None
    assert not parts.exists()
    assert pretrain.pretrain(config, parts, progress=False, stop_at=4) is None
    pretrain.pretrain(config, parts, progress=False)
    a, b = load_file(whole), load_file(parts)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (pretrain.checkpoint_metadata(p)["history"] for p in (whole, parts))
    assert [(h["step"], h["mean_loss"], h["test_accuracy_2048"]) for h in ha] == \
        [(h["step"], h["mean_loss"], h["test_accuracy_2048"]) for h in hb]


def test_every_named_upstream_checkpoint_is_its_file_or_refused_by_name(tmp_path, monkeypatch):
    from rtlib import config
    from rtlib.config import ConfigError, RunConfig, UPSTREAM_CHECKPOINTS

    assert set(UPSTREAM_CHECKPOINTS) == {"embedded", "embedded_robust", "converged",
                                         "converged_robust"}
    files = {name: config.checkpoint_file(name) for name in UPSTREAM_CHECKPOINTS}
    assert len(set(files.values())) == len(files)  # one file each
    for name, path in files.items():
        if path.is_file():
            assert config.resolve_weights(name) == str(path)
    monkeypatch.setattr(config, "CONVERGED_ROBUST_WEIGHTS", tmp_path / "none.safetensors")
    with pytest.raises(ConfigError, match="^weights: not made yet: .converged_robust.*"
                                          "none.safetensors"):
        RunConfig(task="digits", strategy="full", weights="converged_robust").check()


def test_the_last_fifth_gain_reads_the_curve_at_80_percent_of_all_stages():
    def stage(steps, accs, init=None):
        return {"config": {"steps": steps}, "init": init,
                "history": [{"step": s, "test_accuracy_2048": a} for s, a in accs]}

    one = stage(1000, [(500, 0.5), (750, 0.7), (1000, 0.9)])
    # 80% of 1,000 is 800: between 0.7 (750) and 0.9 (1,000), at 0.74
    assert abs(pretrain.last_fifth_gain(one) - 0.16) < 1e-9
    # a second stage of 1,000 steps: 80% of 2,000 is step 1,600, inside the second stage
    two = stage(1000, [(500, 0.91), (1000, 0.95)], init=one)
    assert abs(pretrain.last_fifth_gain(two) - (0.95 - 0.918)) < 1e-9  # 1,600: 0.91 + 0.2 x 0.04
    assert pretrain.last_fifth_gain(stage(10, [(10, 0.5)])) is None
