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
import json
from pathlib import Path

import numpy as np
import pytest

from rtlib import interpolate, metrics, plan, store, train
from rtlib.config import ConfigError, RunConfig, preset_defaults

STUDY = Path(__file__).resolve().parents[1] / "study"
MANIFEST = STUDY / plan.MANIFEST
ACC_TOLERANCE, MASK_TOLERANCE = 0.005, 0.01

committed = pytest.mark.skipif(not MANIFEST.is_file(),
                               reason="no committed study (python -m rtlib study writes it)")


def _replay_picks(count: int = 3) -> list[str]:
    """The committed runs to re-execute: on the first task, seed 0, full fine-tuning and two
    strategies of other mechanisms (reparameterize, add)."""
    if not MANIFEST.is_file():
        return []
    runs = json.loads(MANIFEST.read_text())["runs"]
    main = [r for r in runs if r["role"] == "study" and r["seed"] == 0]
    first_task = main[0]["task"] if main else None
    wanted = ("full", "lora", "compacter")
    picks = [r["run_id"] for s in wanted for r in main
             if r["task"] == first_task and r["strategy"] == s]
    return picks[:count]


@committed
def test_committed_runs_are_todays_and_a_complete_study_has_every_run():
    """A study is computed over several sessions and committed at the end of each: no committed
    run may be orphaned by a change of identity; once the manifest says it is complete, every
    run must be there and the chosen learning rates must be the manifest's."""
    from rtlib.strategies import PAPER_STRATEGIES

    manifest = json.loads(MANIFEST.read_text())
    selection = plan.selection_configs("study", list(PAPER_STRATEGIES))
    known = {c.run_id() for c in selection}
    swept = all(store.complete_run(STUDY, c) is not None for c in selection)
    study_plan = None
    if swept:  # the chosen rates are known: so are the study's run ids
        study_plan = plan.plan("study", results_dir=STUDY, compute_selection=False)
        known |= {c.run_id() for c in study_plan.main}
        known |= {c.run_id() for c in plan.remedies_plan(study_plan).robust}
        if manifest["learning_rates"]:
            assert manifest["learning_rates"] == study_plan.lrs
    committed_ids = {p.stem for p in (STUDY / "runs").glob("*.parquet")}
    orphans = sorted(committed_ids - known)
    assert not orphans, (f"{len(orphans)} committed runs are not runs of today's study (e.g. "
                         f"{orphans[0]}): a change of identity; remake the study (make study) "
                         "or restore the configuration")
    # The same for the interpolation paths (keyed by their runs and coefficients)
    committed_paths = {p.stem for p in (STUDY / "interpolation").glob("*.parquet")}
    if committed_paths:
        assert swept, "interpolation paths are committed, but the sweep's runs are missing"
        # the preset's form, and the update form its paths are being recomputed in
        paths = {job.run_id() for form in interpolate.FORMS
                 for job in plan.remedies_plan(study_plan, path_form=form).paths}
        orphans = sorted(committed_paths - paths)
        assert not orphans, (f"{len(orphans)} committed interpolation paths are not paths of "
                             f"today's study (e.g. {orphans[0]}): remake them (make study)")
    if manifest["runs_complete"] == manifest["runs_planned"]:
        assert swept, "the manifest says complete, but the sweep's runs are missing"
        missing = [c for c in study_plan.main if store.complete_run(STUDY, c) is None]
        assert not missing, (
            f"{len(missing)} of {len(study_plan.main)} runs of the study are not in {STUDY} "
            f"under today's run ids (e.g. {missing[0].task}/{missing[0].strategy}/seed "
            f"{missing[0].seed}): remake the study (make study) or restore the configuration")


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


@committed
@pytest.mark.parametrize("run_id", _replay_picks())
def test_committed_run_reproduces_its_first_two_points(run_id):
    meta, table = store.read_run(STUDY / "runs" / f"{run_id}.parquet")
    config = RunConfig.from_dict({**meta["config"], "eps": tuple(meta["config"]["eps"])})
    assert config.run_id() == run_id, "the stored configuration hashes to another run id"
    whole = run_id == _replay_picks()[0]
    fresh = train.replay(config, points=2, device="cpu",
                         test_images=None if whole else PREFIX_IMAGES)
    _assert_replays(config, table.to_pandas().head(2), fresh)


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
