"""One home for each question: the config is a leaf answered before torch is imported, the
metrics have one schema, facts such as the strategy order come from the registry, and the
store owns its folder (locks, permissions, read-only use)."""
import fcntl
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from rtlib import metrics, store, strategies, train
from rtlib.config import ConfigError, RunConfig

from .test_engine import tiny_config


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_config_is_a_leaf():
    loaded = _modules_after("import rtlib.config")
    assert "torch" not in loaded
    assert {m for m in loaded if m.startswith("rtlib.")} == {"rtlib.config"}


@pytest.mark.parametrize("argv,field", [
    (["--task", "nope", "--strategy", "full"], "task"),
    (["--task", "digits", "--strategy", "lorra"], "strategy"),
    (["--task", "digits", "--strategy", "full", "--domain", "sketch"], "domain"),
    (["--task", "digits", "--strategy", "full", "--steps", "0"], "steps"),
    (["--task", "digits", "--strategy", "full", "--batch-size", "999"], "batch_size"),
    (["--task", "digits", "--strategy", "full", "--attack", "fgsm"], "attack"),
    # issue 32: bounds of fields, hyper-parameters and devices need no torch either
    (["--task", "digits", "--strategy", "full", "--seed", str(2**64)], "seed"),
    (["--task", "digits", "--strategy", "lora", "--hparam", "rank=0"], "lora.rank"),
    (["--task", "digits", "--strategy", "compacter", "--hparam", "n=100"], "compacter.n"),
    (["--task", "digits", "--strategy", "full", "--schedule", "every:1", "--steps", "9999999"],
     "schedule"),
])
def test_bad_options_are_answered_before_torch_is_imported(argv, field, tmp_path):
    code = (f"from rtlib import cli\ntry:\n    cli.main(['run', '--preset', 'smoke', "
            f"'--results-dir', {str(tmp_path)!r}, *{argv!r}])\nexcept SystemExit as e:\n"
            "    print('EXIT', e.code)")
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')"],
                          capture_output=True, text=True)
    assert "EXIT 2" in done.stdout and "NO TORCH" in done.stdout, done.stdout + done.stderr
    assert f"error: {field}:" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_strategy_order_and_groups_come_from_the_registry():
    assert strategies.ordered(["compacter", "zeta", "full", "bitfit"]) == \
        ["full", "bitfit", "compacter", "zeta"]
    assert strategies.adapting("peripheral") == ["linear_probe", "bitfit"]
    assert set(strategies.adapting("intermediate")) == {"lora", "ia3", "adapter", "compacter",
                                                        "dora"}
    with pytest.raises(ConfigError, match="information"):
        strategies.adapting("middle")


def test_metrics_schema_names_and_long_form():
    assert metrics.robust(2 / 255) == "robust_acc@2/255" and metrics.ood("outline") == \
        "ood_acc@outline"
    assert metrics.qualifier(metrics.robust(1 / 255)) == "1/255"
    wide = pd.DataFrame({"run_id": ["a", "a"], "step": [0, 5], "test_acc": [0.5, 0.8],
                         "robust_acc@1/255": [0.3, 0.2], "ood_acc@x": [0.4, 0.6]})
    long = metrics.long(wide)
    assert len(long) == 6
    row = long[(long.metric == "robust") & (long.step == 5)].iloc[0]
    assert (row.qualifier, row.value) == ("1/255", 0.2)
    assert set(long.metric) == {"test", "robust", "ood"}


def test_a_run_held_by_another_process_is_not_trained_twice(tmp_path):
    config = tiny_config(steps=8)
    lock = tmp_path / "locks" / f"{config.run_id()}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:  # another open file description: flock conflicts
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(store.StoreError, match="being computed by another process"):
            with store.claim(tmp_path, config, wait=False):
                pass
    with store.claim(tmp_path, config, wait=False) as done:  # released: ours now
        assert done is None


def test_a_stale_temporary_file_is_removed_only_under_the_lock(tmp_path):
    config = tiny_config(steps=8)
    stale = store.run_path(tmp_path, config).with_name(
        f".{config.run_id()}.parquet.abc.tmp")
    stale.parent.mkdir(parents=True)
    stale.write_text("half a file")
    other = stale.with_name(".0123456789abcdef.parquet.xyz.tmp")  # another run's write
    other.write_text("in progress")
    train.run(config, tmp_path, progress=False)
    assert not stale.exists() and other.exists()


def test_files_follow_the_umask_and_a_complete_store_is_used_without_writing(tmp_path):
    old = os.umask(0o022)
    try:
        config = tiny_config(steps=8)
        path = train.run(config, tmp_path, progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    from rtlib import sweep

    summary = sweep.run([config], tmp_path, progress=False)
    assert summary.status.tolist() == ["skipped"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_missing_store_is_an_error_not_an_empty_frame(tmp_path):
    with pytest.raises(store.StoreError, match="does not exist"):
        store.load(tmp_path / "nowhere")


def test_a_full_disk_is_a_store_error_naming_the_file(tmp_path):
    def full(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    with pytest.raises(store.StoreError, match=r"could not write .*x\.pt"):
        store.atomic_write(tmp_path / "x.pt", full)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["gpu", "cuda:7", "tpu"])
def test_devices_this_machine_lacks_are_named(device):
    import torch

    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ConfigError, match="device"):
        train.resolve_device(device)


def test_book_parameters_are_checked_against_every_notebook_before_any_runs():
    from rtlib.report import book

    book.check_parameters({"steps": 5, "preset": "smoke"})
    with pytest.raises(ConfigError, match=r"-p step: .*allowed: .*steps"):
        book.check_parameters({"step": 5})
    # A list given as text (papermill's -p): named by its field, never read a character at
    # a time (which reported a bad seed '[' or, for alphas, a bare ValueError).
    for name in ("tasks", "strategies", "seeds", "alphas", "robust_tasks"):
        with pytest.raises(ConfigError, match=rf"^{name}: not a list: '\[0, 1\]'"):
            book.check_parameters({name: "[0, 1]"})


def test_the_books_setting_is_written_once():
    """Every chapter declares ``preset = None`` and resolves it to config.BOOK_PRESET, so
    switching the setting the book shows is one line."""
    import papermill as pm

    from rtlib.config import BOOK_PRESET, PRESETS, book_preset
    from rtlib.report import book

    declared = {p.stem: pm.inspect_notebook(str(p)) for p in book.notebooks()}
    chapters = [name for name, params in declared.items() if "preset" in params]
    assert len(chapters) >= 5
    assert {declared[name]["preset"]["default"] for name in chapters} == {"None"}
    assert BOOK_PRESET in PRESETS and book_preset(None) == BOOK_PRESET
    assert book_preset("smoke") == "smoke"


def test_a_presets_store_is_the_checkouts_wherever_in_it_the_work_starts(tmp_path,
                                                                        monkeypatch):
    """A notebook run from notebooks/ (papermill --cwd notebooks) reads the committed study
    instead of computing a new one in notebooks/study/; outside a checkout the store is
    relative to the working directory, and a page shows the store relative to the checkout."""
    from rtlib.config import checkout_root, preset_store, shown_path

    checkout = tmp_path / "checkout"
    (checkout / "notebooks" / "deep").mkdir(parents=True)
    (checkout / "_toc.yml").write_text("root: intro\n")
    monkeypatch.chdir(checkout / "notebooks" / "deep")
    assert checkout_root() == checkout.resolve()
    assert preset_store("study") == str(checkout.resolve() / "study")
    assert preset_store("embedded") == str(checkout.resolve() / "results")
    assert shown_path(preset_store("study")) == "study"
    from rtlib import cli  # the CLI's store of single runs and sweeps too

    assert cli.build_parser().parse_args(["run", "--task", "digits", "--strategy", "lora"]
                                         ).results_dir == str(checkout.resolve() / "results")
    monkeypatch.chdir(tmp_path)
    assert checkout_root() is None
    assert preset_store("study") == "study" and shown_path("/elsewhere/x") == "/elsewhere/x"


def test_cli_options_are_generated_from_the_fields():
    from rtlib import cli

    text = cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for name in ("--train-eval-size", "--val-fraction", "--ood-train-domains", "--lr-schedule",
                 "--no-merge-eval", "--precision"):
        assert name in text
    assert RunConfig.__dataclass_fields__["lr"].metadata["help"] in " ".join(text.split())


def test_image_folders_do_not_follow_links_out_and_cap_image_size(tmp_path, monkeypatch):
    from PIL import Image

    from rtlib.data import hub

    root = tmp_path / "train"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "cat" / "a.png")
    hub.read_image_folder(root, 8)  # a plain folder reads
    (root / "cat" / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(hub.CorruptImage, match="zero.png.*not a regular file inside"):
        hub.read_image_folder(root, 8)
    (root / "cat" / "zero.png").unlink()
    monkeypatch.setattr(hub, "MAX_PIXELS", 1000)  # 40 x 30 = 1,200 pixels
    with pytest.raises(hub.CorruptImage, match=r"a.png is 40 x 30 pixels"):
        hub.read_image_folder(root, 8)


def test_lora_alpha_has_an_upper_bound():
    from rtlib import preflight

    with pytest.raises(ConfigError, match="lora.alpha"):
        preflight.check(tiny_config(hparams={"alpha": 1e30}))


def test_chapters_run_in_this_environment_whatever_python3_kernel_jupyter_finds(tmp_path,
                                                                                monkeypatch):
    """A reader's own "python3" kernel (here a broken one, first on Jupyter's search path)
    must not be the one that executes the chapters: rtlib's environment is."""
    import nbformat

    from rtlib.report import book

    decoy = tmp_path / "jupyter" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(json.dumps({
        "argv": [str(tmp_path / "no-such-python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"], "display_name": "someone else's", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    seen = tmp_path / "executable.txt"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import sys; open({str(seen)!r}, 'w').write(sys.executable)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                       "display_name": "Python 3"}
    (tmp_path / "notebooks").mkdir()
    path = tmp_path / "notebooks" / "chapter.ipynb"
    nbformat.write(notebook, str(path))
    book._execute_one(path, tmp_path, None, tmp_path, progress=False)  # executed: tmp_path/
    assert seen.read_text() == sys.executable


def test_no_chapter_reuses_a_parameters_name_for_something_else():
    """A chapter may refine a parameter from itself (``preset = config.book_preset(preset)``,
    ``tasks = tasks or [...]``) but never bind its name to another value: a reader's ``-p``
    would then be lost or reach the wrong call (the methods page once named its table of tasks
    ``tasks``)."""
    import ast

    import papermill as pm

    from rtlib.report import book

    class Bindings(ast.NodeVisitor):  # the notebook's own names, not those inside functions
        def __init__(self):
            self.found = []

        def visit_FunctionDef(self, node):
            pass

        def visit_Lambda(self, node):
            pass

        def visit_Assign(self, node):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.found.append((name.id, node.value))

        def visit_For(self, node):
            self.found += [(n.id, None) for n in ast.walk(node.target) if isinstance(n, ast.Name)]
            self.generic_visit(node)

    bad = []
    for path in book.notebooks():
        declared = set(pm.inspect_notebook(str(path)))
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
                continue
            visitor = Bindings()
            visitor.visit(ast.parse("".join(cell["source"])))
            for name, value in visitor.found:
                uses = ({n.id for n in ast.walk(value) if isinstance(n, ast.Name)}
                        if value is not None else set())
                if name in declared and name not in uses:
                    bad.append(f"{path.name}: {name}")
    assert not bad, bad


def _command_parameters(words: list[str]) -> dict:
    """The parameters a command gives the chapters, read by the program's own parser:
    ``python -m rtlib book`` reads ``-p`` as YAML; papermill reads ``-p`` as text (numbers
    and booleans aside) and ``-y`` as YAML."""
    import yaml

    if words[:3] == ["python", "-m", "rtlib"]:
        from rtlib import cli

        return cli.book_parameters(cli.build_parser().parse_args(words[3:]))
    assert words[0] == "papermill", words
    import papermill.cli

    options = papermill.cli.papermill.make_context("papermill", words[1:]).params
    params = {name: papermill.cli._resolve_type(value) for name, value in options["parameters"]}
    for text in options["parameters_yaml"]:
        params.update(yaml.safe_load(text))
    return params


def test_the_exercises_commands_pass_the_books_checks():
    """Every command an exercise or the introduction tells a reader to type (``python -m
    rtlib book`` or ``papermill``, or a fragment such as ``-p steps 2000`` that continues the
    exercise's last command) names declared parameters and values the chapters accept, parsed as that program
    parses them and checked as ``make book`` checks them, before anything runs."""
    import re
    import shlex

    from rtlib.report import book

    commands = []
    for path in book.notebooks():
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            if cell["cell_type"] != "markdown" or "Exercises" not in text:
                continue
            for line in text.splitlines():  # one exercise per line
                program = None
                for span in re.findall(r"`((?:[^`]* )?-[py] [^`]*)`", line):
                    words = shlex.split(span)
                    if words[0].startswith("-"):
                        assert program, f"{path.name}: {span!r} continues no command"
                        words = program + words
                    else:
                        # python -m rtlib book | papermill IN.ipynb OUT.ipynb
                        program = words[:4] if words[0] == "python" else words[:3]
                    commands.append((path.name, span, words))
    assert len(commands) >= 10 and any(span.startswith("-") for _, span, _ in commands)
    intro = (book.root() / "book" / "intro.md").read_text()  # its "How to rerun it"
    for line in intro.splitlines():
        if line.startswith(("python -m rtlib book", "papermill ")):
            command = line.split("#")[0]
            commands.append(("intro.md", command, shlex.split(command)))
    assert sum(name == "intro.md" for name, _, _ in commands) >= 3
    for name, span, words in commands:
        params = _command_parameters(words)
        assert params, (name, span)
        book.check_parameters(params)  # raises ConfigError naming the field
