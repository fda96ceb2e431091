"""A results folder is data other people hand us: reading it never runs code, and a corrupt
file is set aside (named in a warning) and redone instead of trusted or blocking its run."""
import os
import pickle

import pytest
import torch

from rtlib import store, train
from rtlib.pretrain import PretrainConfig, pretrain

from .test_engine import tiny_config


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"run_id": "x", "model": Payload(marker)}, f)
    # torch.save's zip format too, which is what a real state file looks like
    torch.save({"state": Payload(marker)}, str(path) + ".zip")


def _aside(folder, name):
    return [p for p in folder.iterdir() if p.name.startswith(name + ".corrupt-")]


@pytest.mark.parametrize("fmt", ["pickle", "torch-zip"])
def test_a_planted_partial_checkpoint_does_not_run_and_the_run_starts_fresh(tmp_path, fmt):
    config = tiny_config(steps=8)
    partial = store.partial_path(tmp_path, config)
    marker = tmp_path / "payload-ran"
    _plant(partial, marker)
    if fmt == "torch-zip":
        os.replace(str(partial) + ".zip", partial)
    with pytest.warns(RuntimeWarning, match=partial.name):
        out = train.run(config, tmp_path, progress=False)
    assert not marker.exists()
    assert store.complete_run(tmp_path, config) == out
    assert len(_aside(partial.parent, partial.name)) == 1 and not partial.exists()


def test_a_planted_pretrain_state_does_not_run(tmp_path):
    out = tmp_path / "up.safetensors"
    marker = tmp_path / "payload-ran"
    _plant(out.with_name(out.name + ".state.pt"), marker)
    config = PretrainConfig(steps=2, batch_size=8, train_images=32, test_images=8,
                            checkpoint_every=1, warmup_steps=1)
    with pytest.warns(RuntimeWarning, match="state.pt"):
        meta = pretrain(config, out, progress=False)
    assert not marker.exists() and out.is_file() and meta["config"]["steps"] == 2


@pytest.mark.parametrize("damage", ["truncate", "random", "empty"])
def test_a_corrupt_complete_run_is_set_aside_and_redone(tmp_path, damage):
    config = tiny_config(steps=8)
    path = train.run(config, tmp_path, progress=False)
    good = store.load(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "random": os.urandom(len(data)),
                      "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match=path.name):
        assert store.complete_run(tmp_path, config) is None
    assert len(_aside(path.parent, path.name)) == 1
    train.run(config, tmp_path, progress=False)
    redone = store.load(tmp_path)
    cols = ["step", "train_acc", "test_acc", "robust_acc@1/255"]
    assert redone[cols].equals(good[cols])  # the same numbers, recomputed


def test_store_load_names_an_unreadable_file_and_leaves_it_out(tmp_path):
    config = tiny_config(steps=8)
    train.run(config, tmp_path, progress=False)
    bad = store.runs_dir(tmp_path) / "0123456789abcdef.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.warns(RuntimeWarning, match=bad.name):
        frame = store.load(tmp_path)
    assert frame["run_id"].unique().tolist() == [config.run_id()]
