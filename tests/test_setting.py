"""The official setting: its evaluation schedule, learning rates, lengths and splits."""
import json
import math

import pytest
import torch

from rtlib import cli, data, optim, preflight
from rtlib.config import RunConfig, parse_schedule, preset_defaults
from rtlib.config import ConfigError


def _should_log(step):  # scripts/finetune.py of kyangl/robustness-finetuning, verbatim
    if step <= 100:
        return step % 50 == 0
    elif step <= 300:
        return step % 30 == 0
    if step <= 1000:
        return step % 200 == 0
    elif step <= 3000:
        return step % 2000 == 0
    elif step <= 10000:
        return step % 4000 == 0
    elif step <= 30000:
        return step % 6000 == 0
    else:
        return step % 20000 == 0


def test_official_schedule_is_should_log_plus_the_end():
    for total in (30_000, 7_040, 45_000):
        expected = sorted({s for s in range(total + 1) if _should_log(s)} | {total})
        assert parse_schedule("official", total) == expected
    assert parse_schedule("official", 30_000)[:12] == [0, 50, 100, 120, 150, 180, 210, 240, 270,
                                                        300, 400, 600]
    assert {8000, 2000, 4000, 12_000, 30_000} <= set(parse_schedule("official", 30_000))


def _dry_run(capsys, *args):
    assert cli.main(["run", "--dry-run", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_preset_is_the_official_setting(capsys):
    full = _dry_run(capsys, "--task", "cifar10", "--strategy", "full", "--preset", "paper")
    lora = _dry_run(capsys, "--task", "cifar10", "--strategy", "lora", "--preset", "paper")
    assert (full["lr"], full["lr_schedule"], full["warmup_steps"], full["weight_decay"]) == \
        (2e-5, "linear", 0, 0.01)
    assert (lora["lr"], lora["lr_schedule"], lora["warmup_steps"], lora["weight_decay"]) == \
        (5e-4, "cosine", 800, 0.01)
    # 20 epochs over the 90% left after the validation split, 128 images a step (last short).
    assert (lora["train_images"], lora["val_images"]) == (45_000, 5_000)
    assert lora["total_steps"] == 20 * math.ceil(45_000 / 128)
    assert lora["eval_steps"] == parse_schedule("official", lora["total_steps"])
    assert lora["trainable"] == 1_187_338 and lora["hparams"]["target_modules"] == \
        ["q", "k", "v", "fc1", "fc2"]
    assert full["run_id"] != lora["run_id"]


def test_dry_run_runs_nothing_and_names_bad_options(capsys, tmp_path):
    out = _dry_run(capsys, "--task", "digits", "--strategy", "ia3", "--preset", "smoke",
                   "--results-dir", str(tmp_path))
    assert out["trainable"] > 0 and not any(tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--dry-run", "--task", "digits", "--strategy", "ia3",
                  "--lr-schedule", "cos"])
    assert exit_.value.code == 2
    assert "lr_schedule" in capsys.readouterr().err


@pytest.mark.parametrize("field,value,allowed", [
    ("lr_schedule", "cos", "constant, cosine, linear"),
    ("val_fraction", 0.6, "a number in [0, 0.5)"),
    ("val_fraction", 0.0001, "a share that leaves 1 to"),
    ("ood_train_domains", "some", "all, source"),
    ("epochs", -1, "an integer in [0, 10000000]"),
])
def test_bad_setting_values_name_the_field(field, value, allowed):
    config = RunConfig(task="digits", strategy="full", **{**preset_defaults("smoke"),
                                                           field: value})
    with pytest.raises(ConfigError) as err:
        preflight.check(config)
    assert err.value.field == field and allowed in str(err.value)


def test_schedules_decay_as_hugging_face_does():
    def rates(kind, warmup, total):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = optim.warmup_then(opt, kind, warmup, total)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    linear = rates("linear", 0, 10)
    assert linear[0] == 1.0 and linear[5] == pytest.approx(0.5) and linear[-1] == pytest.approx(0.1)
    cosine = rates("cosine", 4, 14)
    assert cosine[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert cosine[9] == pytest.approx(0.5)  # half-way through the decay
    assert rates("constant", 2, 6)[2:] == [1.0] * 4


def test_validation_split_is_held_out_of_the_training_images():
    task = data.load_task("digits", train_size=100, test_size=8)
    split = data.hold_out(task, 10)
    assert len(split.train) == 90 and len(split.val) == 10
    assert torch.equal(split.train.images, task.train.images[:90])  # the prefix is unchanged
    assert torch.equal(split.val.images, task.train.images[90:])
    assert sorted(split.val.labels.tolist()) == list(range(10))  # balanced
    assert data.hold_out(task, 0) is task


def test_official_domain_leak_is_an_explicit_option():
    source = data.load_task("digits", train_size=40, test_size=8, domain="print")
    leaky = data.load_task("digits", train_size=50, test_size=8, domain="print",
                           train_domains="all")  # 10 images (one per class) of each domain
    assert set(source.ood) == set(leaky.ood) == {"outline", "texture", "clutter", "dots"}
    # The in-domain share of the leaky training set is a fifth: its other images come from
    # the domains it is then tested on as "out of distribution".
    in_domain = data.load_task("digits", train_size=10, test_size=8, domain="print").train
    assert torch.equal(leaky.train.images[0], in_domain.images[0])
    assert not torch.equal(leaky.train.images[1], source.train.images[1])
    assert sorted(leaky.train.labels.tolist()) == sorted(list(range(10)) * 5)
    with pytest.raises(ConfigError) as err:
        data.load_task("digits", train_size=10, test_size=8, train_domains="some")
    assert err.value.field == "train_domains"


def test_every_preset_source_names_a_value_of_its_preset():
    from rtlib.report import official
    from rtlib.config import PRESETS

    for name in PRESETS:
        table = official.preset_sources(name)
        assert set(PRESETS[name]["sources"]) <= set(table.index), name
    paper = official.preset_sources("paper")
    assert paper.loc["lr", "value"] == "0.0005" and paper.loc["full.lr", "value"] == "2e-05"
    assert paper.loc["eps", "value"] == "1/255"
    frame = official.differences_frame()
    assert frame["kind"].isin(official.KINDS).all() and frame["what"].is_unique
    assert "DomainNet training domains" in set(frame["what"])
