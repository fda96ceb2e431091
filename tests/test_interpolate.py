"""Weight interpolation: its ends are the two runs it joins, and its rows are stored."""
import pandas as pd
import pytest

from rtlib import interpolate, metrics, store, train
from rtlib.config import ConfigError
from tests.test_engine import tiny_config

COLUMNS = [metrics.TEST_ACC, metrics.robust(1 / 255), metrics.robust(4 / 255),
           metrics.TEST_MASK, metrics.robust_mask(1 / 255)]


def _final(results_dir, config) -> pd.Series:
    return store.load(results_dir, [config]).sort_values(metrics.STEP).iloc[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with a linear probe and four fine-tuned runs of one tiny task and seed."""
    folder = tmp_path_factory.mktemp("runs")
    configs = {s: tiny_config(strategy=s, steps=8, schedule="every:8")
               for s in ("linear_probe", "full", "lora", "adapter", "bitfit")}
    for config in configs.values():
        train.run(config, folder, progress=False)
    return folder, configs


def test_the_path_joins_the_linear_probe_to_the_fine_tuned_model(trained, monkeypatch):
    tmp_path, runs = trained
    probe, full, lora, adapter = (runs[s] for s in ("linear_probe", "full", "lora", "adapter"))
    # The mixing itself: alpha 1 is the fine-tuned model and alpha 0 the linear probe, for
    # every form of path (bit-exact on the same machine), the adapter's scaled branch too
    for config in (full, lora, adapter):
        ends = interpolate._evaluate(config, probe, [0.0, 1.0], tmp_path, "cpu", False)
        for col in COLUMNS:
            assert ends[1.0][col] == _final(tmp_path, config)[col], (config.strategy, col)
            assert ends[0.0][col] == _final(tmp_path, probe)[col], (config.strategy, col)

    evaluated = []
    real = interpolate.evaluate_point
    monkeypatch.setattr(interpolate, "evaluate_point",
                        lambda *a, **k: evaluated.append(1) or real(*a, **k))
    frame = interpolate.path(full, probe, (0, 0.5, 1), tmp_path, device="cpu")
    assert frame[interpolate.ALPHA].tolist() == [0.0, 0.5, 1.0]
    assert len(evaluated) == 1  # the ends are the runs' stored last points
    ends = frame.set_index(interpolate.ALPHA)
    for col in COLUMNS:
        assert ends.loc[1.0, col] == _final(tmp_path, full)[col], col
        assert ends.loc[0.0, col] == _final(tmp_path, probe)[col], col
    assert (frame[metrics.STEP] == 8).all()  # the fine-tuned model's step, at both ends
    # The adapter's branch scaled by 0 removes its update: its alpha 0 is the probe, read too
    evaluated.clear()
    adapter_path = interpolate.path(adapter, probe, (0, 0.5, 1), tmp_path, device="cpu")
    assert len(evaluated) == 1 and adapter_path["computed"].tolist() == [False, True, False]
    assert adapter_path.iloc[2][metrics.TEST_ACC] == _final(tmp_path, adapter)[metrics.TEST_ACC]

    # stored: asking again computes nothing
    def no_compute(*args, **kwargs):
        raise AssertionError("a stored path must be read, not computed")

    monkeypatch.setattr(train, "prepare", no_compute)
    again = interpolate.path(full, probe, (0, 0.5, 1), tmp_path, device="cpu")
    pd.testing.assert_frame_equal(again, frame)


def test_weights_that_were_not_kept_are_retrained_to_the_same_values(tmp_path):
    config = tiny_config(strategy="lora", steps=8, schedule="every:4")
    train.run(config, tmp_path, progress=False)
    kept = store.read_weights(tmp_path, config)
    store.weights_path(tmp_path, config).unlink()
    again = interpolate.final_weights(config, tmp_path, train.resolve_device("cpu"))
    assert kept.keys() == again.keys()
    assert all((kept[k] == again[k]).all() for k in kept)
    assert store.read_weights(tmp_path, config) is not None  # kept: the next path reads them


@pytest.mark.parametrize("alphas,message", [((0.5,), "too few"), ((0, 1.5), "alphas")])
def test_bad_coefficients_and_probes_are_named(tmp_path, alphas, message):
    probe, full = tiny_config(strategy="linear_probe"), tiny_config(strategy="full")
    with pytest.raises(ConfigError, match=message):
        interpolate.path(full, probe, alphas, tmp_path)
    with pytest.raises(ConfigError, match="^probe"):
        interpolate.path(full, tiny_config(strategy="bitfit"), (0, 1), tmp_path)
    with pytest.raises(ConfigError, match="^probe"):
        interpolate.path(full, tiny_config(strategy="linear_probe", seed=1), (0, 1), tmp_path)
    assert not any(tmp_path.iterdir())


def test_paths_are_units_of_work_of_the_sweep_in_parallel_processes(trained):
    from rtlib import sweep

    tmp_path, runs = trained
    probe, full, bitfit = (runs[s] for s in ("linear_probe", "full", "bitfit"))
    other_seed = tiny_config(strategy="linear_probe", steps=8, schedule="every:8", seed=1)
    jobs = [interpolate.PathJob(full, probe, (0, 0.25, 1)),
            interpolate.PathJob(bitfit, probe, (0, 0.5, 1)),
            interpolate.PathJob(bitfit, other_seed, (0, 1))]
    summary = sweep.run(jobs, tmp_path, workers=2, progress=False)
    assert summary["status"].tolist() == ["done", "done", "failed"]
    assert "probe" in summary["error"].iloc[2]  # named, recorded, and the others went on
    assert store.failure_path(tmp_path, jobs[2]).is_file()
    assert [j.complete(tmp_path) for j in jobs] == [True, True, False]
    # what the workers stored is what this process computes
    stored = store.read_table(store.interpolation_path(tmp_path, jobs[1].run_id()))
    fresh = interpolate.path(bitfit, probe, (0, 0.5, 1), results_dir=None, device="cpu")
    cols = [metrics.TEST_ACC, metrics.robust(1 / 255), metrics.TEST_MASK]
    pd.testing.assert_frame_equal(stored[cols], fresh[cols])
    again = sweep.run(jobs[:2], tmp_path, workers=2, progress=False)
    assert (again["status"] == "skipped").all()
    loaded = interpolate.load(tmp_path, jobs)  # the failed path is absent
    assert loaded.groupby("strategy").size().to_dict() == {"bitfit": 3, "full": 3}
    assert (loaded[metrics.ROBUST] == loaded[metrics.robust(1 / 255)]).all()


def test_each_fine_tuned_run_gets_a_path_to_its_own_probe(trained):
    _, runs = trained
    made = interpolate.jobs(list(runs.values()), (0, 1))
    assert [j.strategy for j in made] == ["full", "lora", "adapter", "bitfit"]
    assert all(j.probe == runs["linear_probe"] for j in made)
    assert interpolate.jobs([runs["full"]], (0, 1)) == []  # no probe of its task and seed


def _path_model(config, seed=0):
    """A prepared model of ``config``, its trainable parameters at the start, random "final"
    ones (a large update, so that a wrong form is far off) and a random probe head."""
    import torch

    torch.manual_seed(seed)
    _, model = train.prepare(config)
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    final = {n: v + 0.3 * torch.randn_like(v) for n, v in init.items()}
    head = {interpolate._short(n): torch.randn_like(init[n])
            for n in interpolate.models.classifier_names(model)}
    return model, init, final, head


def test_lora_midpoint_is_half_the_merged_update():
    """alpha 0.5 on a LoRA path is W0 + 0.5 B1 A1 (linear in alpha), not the parameters'
    midpoint (which gives a quadratic in alpha), with the head halfway to the probe's."""
    import copy

    import torch

    config = tiny_config(strategy="lora")
    model, init, final, head = _path_model(config)
    x = torch.rand(8, 3, 16, 16)
    at = interpolate.along(copy.deepcopy(model), init, final, head, "weights")
    got = at(0.5)(x)
    # Independently: the fine-tuned LoRA model with B halved (B A halves) and the mixed head
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, v in final.items():
            params[n].copy_(0.5 * v if "lora_B" in n else v)
        for n in interpolate.models.classifier_names(ref):
            params[n].copy_(0.5 * head[interpolate._short(n)] + 0.5 * final[n])
    torch.testing.assert_close(got, ref(x), rtol=1e-4, atol=1e-5)
    # ...and it is not the parameters' midpoint
    naive = copy.deepcopy(ref)
    params = dict(naive.named_parameters())
    with torch.no_grad():
        for n, v in final.items():
            if "lora_" in n:
                params[n].copy_(init[n] + 0.5 * (v - init[n]))
    assert (naive(x) - got).abs().max() > 1e-3


def test_adapter_midpoint_scales_the_branch_by_half():
    """alpha 0.5 on an Adapter path computes h + 0.5 f(h) with the trained modules."""
    import copy

    import torch

    config = tiny_config(strategy="adapter")
    model, init, final, head = _path_model(config)
    x = torch.rand(8, 3, 16, 16)
    got = interpolate.along(copy.deepcopy(model), init, final, head, "branch")(0.5)(x)
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for n, v in final.items():
            params[n].copy_(v)
        for n in interpolate.models.classifier_names(ref):
            params[n].copy_(0.5 * head[interpolate._short(n)] + 0.5 * final[n])

    def half_branch(module, inputs, output):  # independent of Bottleneck.scale: recompute
        (h,) = inputs
        return h + 0.5 * module.up(module.act(module.down(h)))

    from rtlib.strategies.adapter import Bottleneck
    for m in ref.modules():
        if isinstance(m, Bottleneck):
            m.register_forward_hook(half_branch)
    torch.testing.assert_close(got, ref(x), rtol=1e-4, atol=1e-5)


def test_paths_whose_update_was_not_scaled_linearly_get_new_keys():
    probe = tiny_config(strategy="linear_probe")
    old = {s: __import__("hashlib").sha256(__import__("json").dumps(
        [tiny_config(strategy=s).run_id(), probe.run_id(), [0.0, 1.0]]).encode()
    ).hexdigest()[:16] for s in ("full", "bitfit", "ia3", "lora", "adapter", "compacter")}
    new = {s: interpolate.path_key(tiny_config(strategy=s), probe, (0.0, 1.0)) for s in old}
    assert {s for s in old if old[s] == new[s]} == {"full", "bitfit", "ia3"}


def test_the_parameters_form_is_the_old_straight_line_with_the_old_keys(trained):
    """The committed study's paths were made as the parameters' straight line: that form keeps
    their keys, its alpha 0 of an adapter is its own random start (computed, not the probe),
    and for full fine-tuning both forms are the same path."""
    tmp_path, runs = trained
    probe, full, adapter = (runs[s] for s in ("linear_probe", "full", "adapter"))
    for s in ("full", "lora", "adapter"):
        config = runs[s]
        old = __import__("hashlib").sha256(__import__("json").dumps(
            [config.run_id(), probe.run_id(), [0.0, 0.5, 1.0]]).encode()).hexdigest()[:16]
        assert interpolate.path_key(config, probe, (0.0, 0.5, 1.0), "parameters") == old
    assert interpolate.run_ends("adapter", "parameters") == (1.0,)
    legacy = interpolate.path(adapter, probe, (0, 0.5, 1), tmp_path, device="cpu",
                              form="parameters")
    assert legacy["computed"].tolist() == [True, True, False]
    import copy

    import torch

    model, init, final, head = _path_model(adapter)  # the two forms are two models
    x = torch.rand(4, 3, 16, 16)
    half = [interpolate.along(copy.deepcopy(model), init, final, head, form)(0.5)(x)
            for form in ("parameters", "branch")]
    assert (half[0] - half[1]).abs().max() > 1e-3
    both = [interpolate._evaluate(full, probe, [0.5], tmp_path, "cpu", False, form)[0.5]
            for form in interpolate.FORMS]
    assert both[0][metrics.TEST_MASK] == both[1][metrics.TEST_MASK]
    with pytest.raises(ConfigError, match="form"):
        interpolate.path_key(full, probe, (0.0, 1.0), "straight")
