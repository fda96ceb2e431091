"""The committed study (``study/``) is still what the code computes.

Two checks. Every run the book reads must be in the store under the id today's code gives its
configuration (a change of identity would make ``make book`` recompute for hours). And a few
committed runs are re-executed up to their second evaluation point and compared with the
stored rows: the first whole (every column), the others on the first 256 test images (the
attack is most of an evaluation's cost; each image's result depends only on that image, so
their masks must be the stored masks' prefix; the OOD accuracies, stored without masks, are
checked on the first run only).

Tolerance: the same machine with the same thread count reproduces a run bit for bit (the
engine's own tests check that). Another CPU may pick other kernels (AVX2 or AVX-512, another
reduction order across threads), which moves logits by about 1e-6 relative: a clean prediction
flips only for an image that sits on the decision boundary, but PGD follows the sign of the
gradient for 10 steps, so an image near the boundary under attack can end on the other side.
So accuracies may differ by at most 0.5 points (5 of 1,024 images) and the per-image masks by at
most 1% of the images; the training loss by 1e-3 relative.
"""
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtlib import interpolate, metrics, plan, store, train
from rtlib.config import ConfigError, RunConfig, preset_defaults

ROOT = Path(__file__).resolve().parents[1]
#: The committed stores and the presets that compute them: the first study (the weak upstream
#: model) and the ladder study (issue 34: the converged model, with its upstream arms).
STORES = {"study": ROOT / "study", "ladder": ROOT / "ladder"}
STUDY = STORES["study"]
MANIFEST = STUDY / plan.MANIFEST
ACC_TOLERANCE, MASK_TOLERANCE = 0.005, 0.01

committed = pytest.mark.skipif(not MANIFEST.is_file(),
                               reason="no committed study (python -m rtlib study writes it)")
#: The stores committed in this checkout.
COMMITTED = [name for name, folder in STORES.items() if (folder / plan.MANIFEST).is_file()]
#: The roles of a manifest whose runs are evaluated along their whole length (the sweep's
#: runs of a study may be evaluated at their end only: replaying their second point would
#: retrain them whole).
REPLAYED_ROLES = ("study", "upstream arm", "robust upstream", "control")
#: The roles whose runs are fine-tuned from another upstream model than the study's.
OTHER_UPSTREAM = ("upstream arm", "robust upstream")


@functools.lru_cache(maxsize=None)  # read at collection and again by the test: once
def _replay_picks(count: int = 3) -> list[tuple[str, str]]:
    """The committed runs to re-execute, as (store, run id): in each committed store, on its
    first task and seed 0, full fine-tuning and two strategies of other mechanisms
    (reparameterize, add) from the study's upstream model, and full fine-tuning on its first
    task from every other upstream model it fine-tuned from (its arms, the robust remedy's)."""
    picks = []
    for name in COMMITTED:
        runs = json.loads((STORES[name] / plan.MANIFEST).read_text())["runs"]
        main = [r for r in runs if r["role"] in REPLAYED_ROLES and r["seed"] == 0]
        first_task = main[0]["task"] if main else None
        wanted = ("full", "lora", "compacter")
        ids = [r["run_id"] for s in wanted for r in main if r["role"] == "study"
               and r["task"] == first_task and r["strategy"] == s][:count]
        arms = [r for r in main if r["role"] in OTHER_UPSTREAM and r["strategy"] == "full"]
        by_model = {}
        for r in arms:
            weights = store.read_meta(STORES[name] / "runs" / f"{r['run_id']}.parquet")[
                "config"]["weights"]
            by_model.setdefault(weights, r["run_id"])
        picks += [(name, i) for i in [*ids, *by_model.values()]]
    return picks


def _known_ids(preset: str, folder: Path, manifest: dict) -> tuple[set[str], bool, Any]:
    """The run ids today's code gives the ``preset``'s study (its sweep; once the sweep is
    stored, its runs, arms, control and robust upstream runs), whether the sweep is complete,
    and the study's plan (None before)."""
    from rtlib.strategies import PAPER_STRATEGIES

    selection, _, swept = plan.sweep_state(preset, list(PAPER_STRATEGIES), folder)
    known = {c.run_id() for c in selection}  # the grid and its extensions called for so far
    study_plan = None
    if swept:  # the chosen rates are known: so are the study's run ids
        study_plan = plan.plan(preset, results_dir=folder, compute_selection=False)
        known |= {c.run_id() for c in [*study_plan.main, *study_plan.arms, *study_plan.control,
                                        *plan.remedies_plan(study_plan).robust]}
        if manifest["learning_rates"]:
            assert manifest["learning_rates"] == study_plan.lrs
    return known, swept, study_plan


@pytest.mark.parametrize("preset", COMMITTED)
def test_committed_runs_are_todays_and_a_complete_study_has_every_run(preset):
    """A study is computed over several sessions and committed at the end of each: no committed
    run may be orphaned by a change of identity; once the manifest says it is complete, every
    run must be there and the chosen learning rates must be the manifest's."""
    folder = STORES[preset]
    manifest = json.loads((folder / plan.MANIFEST).read_text())
    known, swept, study_plan = _known_ids(preset, folder, manifest)
    committed_ids = {p.stem for p in (folder / "runs").glob("*.parquet")}
    orphans = sorted(committed_ids - known)
    assert not orphans, (f"{len(orphans)} committed runs are not runs of today's study (e.g. "
                         f"{orphans[0]}): a change of identity; remake the study (make study) "
                         "or restore the configuration")
    # The same for the interpolation paths (keyed by their runs and coefficients)
    committed_paths = {p.stem for p in (folder / "interpolation").glob("*.parquet")}
    if committed_paths:
        assert swept, "interpolation paths are committed, but the sweep's runs are missing"
        # the preset's form, and the other (the first study's first paths, kept for comparison)
        paths = {job.run_id() for form in interpolate.FORMS
                 for job in plan.remedies_plan(study_plan, path_form=form).paths}
        orphans = sorted(committed_paths - paths)
        assert not orphans, (f"{len(orphans)} committed interpolation paths are not paths of "
                             f"today's study (e.g. {orphans[0]}): remake them (make study)")
    if manifest["runs_complete"] == manifest["runs_planned"]:
        assert swept, "the manifest says complete, but the sweep's runs are missing"
        wanted = [*study_plan.main, *study_plan.arms, *study_plan.control]
        missing = [c for c in wanted if store.complete_run(folder, c) is None]
        assert not missing, (
            f"{len(missing)} of {len(wanted)} runs of the study are not in {folder} "
            f"under today's run ids (e.g. {missing[0].task}/{missing[0].strategy}/seed "
            f"{missing[0].seed}): remake the study (make study) or restore the configuration")


@committed
def test_the_quick_setting_takes_the_first_studys_chosen_rates():
    """The quick setting's rates are typed in its preset as "the rates the first study chose on
    its validation split": they must be the ones the committed sweep chooses (full fine-tuning
    excepted: the class demo's rate, chosen on the calibration draw)."""
    from rtlib.config import preset_defaults
    from rtlib.strategies import PAPER_STRATEGIES

    chosen = plan.plan("study", results_dir=STORES["study"], compute_selection=False).lrs
    for strategy in PAPER_STRATEGIES:
        if strategy != "full":
            assert preset_defaults("embedded", strategy)["lr"] == chosen[strategy], strategy


@committed
def test_the_book_default_reads_the_committed_study_and_computes_nothing():
    """`make book` renders the committed study in minutes only if the store holds every run,
    path and robust upstream run the chapters read at their default parameters."""
    from rtlib.config import BOOK_PRESET
    from rtlib.report import book

    assert BOOK_PRESET == "study"
    assert book.missing_runs({}) == 0, "the book's default would compute: finish `make study`"


#: The test images the runs after the first are replayed on: their masks' prefix (the first
#: run is replayed whole, its OOD accuracies included).
PREFIX_IMAGES = 256


def _assert_replays(config: RunConfig, stored, fresh: list[dict]) -> None:
    """``fresh`` rows (:func:`rtlib.train.replay`, maybe on a prefix of the test images) against
    the ``stored`` ones: accuracies within ACC_TOLERANCE, per-image masks within
    MASK_TOLERANCE, the training loss within 1e-3 relative."""
    assert [r[metrics.STEP] for r in fresh] == stored[metrics.STEP].tolist()
    n = int(stored[metrics.TEST_N].iloc[0])
    for i, row in enumerate(fresh):
        k = int(row[metrics.TEST_N])  # n, or the prefix replayed
        accuracies = [metrics.TRAIN_ACC, metrics.VAL_ACC,
                      *[c for c in row if c.startswith(metrics.VAL_ROBUST_PREFIX)]]
        if k == n:  # whole: the test and OOD accuracies as stored
            accuracies += [metrics.TEST_ACC, *[metrics.robust(e) for e in config.eps],
                           # the domains the run measured (a domain added since, such as
                           # dots, is measured by a replay but was not then)
                           *[c for c in row if c.startswith(metrics.OOD_PREFIX)
                             and c in stored]]
        for col in accuracies:
            assert abs(row[col] - stored[col].iloc[i]) <= ACC_TOLERANCE, (
                f"{col} at step {row[metrics.STEP]}: {row[col]} now, {stored[col].iloc[i]} "
                "stored")
        for acc, col in [(metrics.TEST_ACC, metrics.TEST_MASK),
                         *[(metrics.robust(e), metrics.robust_mask(e)) for e in config.eps]]:
            now = metrics.unpack(row[col], k)
            then = metrics.unpack(stored[col].iloc[i], n)[:k]
            changed = np.mean(now != then)
            assert changed <= MASK_TOLERANCE, f"{col}: {changed:.1%} of the images differ"
            assert abs(row[acc] - then.mean()) <= ACC_TOLERANCE, (acc, row[acc], then.mean())
        if i:  # step 0 has no loss
            assert row[metrics.TRAIN_LOSS] == pytest.approx(stored[metrics.TRAIN_LOSS].iloc[i],
                                                            rel=1e-3)


@pytest.mark.parametrize("store_name,run_id", _replay_picks())
def test_committed_run_reproduces_its_first_two_points(store_name, run_id):
    meta, table = store.read_run(STORES[store_name] / "runs" / f"{run_id}.parquet")
    config = RunConfig.from_dict({**meta["config"], "eps": tuple(meta["config"]["eps"])})
    assert config.run_id() == run_id, "the stored configuration hashes to another run id"
    whole = (store_name, run_id) == _replay_picks()[0]
    fresh = train.replay(config, points=2, device="cpu",
                         test_images=None if whole else PREFIX_IMAGES)
    _assert_replays(config, table.to_pandas().head(2), fresh)


@pytest.mark.parametrize("preset", COMMITTED)
def test_a_committed_path_ends_at_its_runs_last_points(preset):
    """A path's ends are its runs' own last evaluation points, copied from the store (its
    interior points are not replayed here: each needs its run's final weights, which are not
    committed, so a whole run retrained; the mechanism is tested in test_interpolate)."""
    from rtlib.report import estimands

    folder = STORES[preset]
    files = sorted((folder / "interpolation").glob("*.parquet"))
    if not files:
        pytest.skip(f"no interpolation path committed in {preset}/ yet")
    for file in files[:: max(1, len(files) // 6)]:  # six paths, spread over the store
        path = store.read_table(file)
        for alpha, run_id in ((1.0, path.run_id.iloc[0]), (0.0, path.probe_run_id.iloc[0])):
            end = path[path.alpha == alpha].iloc[0]
            if end.computed:  # alpha 0 of a path in the parameters' form, for a strategy that
                assert alpha == 0.0  # does not start as the identity, is its own model
                continue
            run = store.read_run(folder / "runs" / f"{run_id}.parquet")[1].to_pandas()
            last = estimands.last_points(run.assign(run_id=run_id))
            for col in (metrics.TEST_ACC, metrics.TEST_MASK, metrics.STEP):
                assert end[col] == last[col].iloc[0], (file.stem, alpha, col)


def test_replay_gives_the_first_rows_of_a_run(tmp_path):
    """The mechanism the checks above rely on, on a smoke run computed here."""
    config = RunConfig(task="digits", strategy="lora", **{
        **preset_defaults("smoke"), "train_size": 128, "test_size": 32, "train_eval_size": 32,
        "steps": 8})
    path = train.run(config, tmp_path, device="cpu", progress=False)
    _, table = store.read_run(path)
    stored = table.to_pandas().head(2)
    fresh = train.replay(config, points=2, device="cpu")
    for i, row in enumerate(fresh):
        for col in (metrics.STEP, metrics.TEST_ACC, metrics.robust(config.eps[0]),
                    metrics.TEST_MASK, metrics.robust_mask(config.eps[0])):
            assert row[col] == stored[col].iloc[i], col
    # On a prefix of the test images: the same images, the same random starts, so the run's
    # masks' prefix (the cheaper check the committed runs after the first get).
    prefix = train.replay(config, points=2, device="cpu", test_images=12)
    assert [r[metrics.TEST_N] for r in prefix] == [12, 12]
    _assert_replays(config, stored, prefix)  # on 12 images, 1% of them is none: exact
    assert not (tmp_path / "partial").exists() or not any((tmp_path / "partial").iterdir())


@committed
def test_a_role_of_the_committed_store_loads_alone():
    """The study's runs, its learning-rate sweep and its robust upstream runs never mix."""
    from rtlib import plan

    parts = {role: plan.load("study", role) for role in plan.ROLES}
    ids = {role: set(frame["run_id"]) for role, frame in parts.items()}
    assert not ids.pop("arms") and not ids.pop("control")  # the first study has neither
    assert all(ids.values())
    assert not (ids["runs"] & ids["sweep"]) and not (ids["runs"] & ids["robust"])
    assert not (ids["sweep"] & ids["robust"])
    runs = parts["runs"]
    assert runs.groupby(["task", "strategy"])["run_id"].nunique().max() == 3  # three seeds
    assert set(parts["robust"]["weights"]) == {"embedded_robust"}
    import pytest

    with pytest.raises(ConfigError, match="role"):
        plan.load("study", "everything")
