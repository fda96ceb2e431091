"""How fast bad input is answered: each case as a whole process (``python -m rtlib ...``, the
way a user meets it, torch's import included), repeated, fastest and slowest kept.

    python bench/bad_inputs.py [--repeat 3]

Field-level mistakes and misspelled names must be answered before torch is imported (under
2 s per process on our 2-core machine, issue 14); a bad model name, device, weights file,
hyper-parameter value or size that does not fit in memory needs timm or torch (issue 32 aims
under 3 s for those); the paper's path offline (HF_HUB_OFFLINE=1, an empty cache) is listed too.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

RUN = ["run", "--preset", "smoke", "--quiet"]
CASES = [
    # answered from the fields and the light name lists (no torch)
    RUN + ["--task", "nope", "--strategy", "full"],
    RUN + ["--task", "digits", "--strategy", "lorra"],
    RUN + ["--task", "digits", "--strategy", "full", "--domain", "sketch"],
    RUN + ["--task", "digits", "--strategy", "full", "--steps", "0"],
    RUN + ["--task", "digits", "--strategy", "full", "--eps", "-1/255"],
    RUN + ["--task", "digits", "--strategy", "full", "--lr", "0"],
    RUN + ["--task", "digits", "--strategy", "full", "--schedule", "hourly"],
    RUN + ["--task", "digits", "--strategy", "full", "--attack", "fgsm"],
    RUN + ["--task", "digits", "--strategy", "full", "--batch-size", "999"],
    RUN + ["--task", "digits", "--strategy", "full", "--weights", "/nonexistent.safetensors"],
    ["sweep", "--preset", "smoke", "--tasks", "digits nope", "--quiet"],
    RUN + ["--task", "digits", "--strategy", "full", "--device", "gpu"],
    ["pretrain", "--steps", "0"],
    ["book", "-p", "step", "5"],
    # issue 32: bounds, parse errors, folders (fields only, no torch)
    RUN + ["--task", "digits", "--strategy", "full", "--steps", "99999999999999999999999"],
    RUN + ["--task", "digits", "--strategy", "full", "--seed", "99999999999999999999"],
    RUN + ["--task", "digits", "--strategy", "full", "--schedule", "log:100000000000"],
    RUN + ["--task", "digits", "--strategy", "lora", "--hparam", "target_modules=[q, k"],
    RUN + ["--task", "digits", "--strategy", "full", "--results-dir", ""],
    ["sweep", "--preset", "smoke", "--tasks", "", "--quiet"],
    ["book", "-p", "seeds", "[0, 1"],
    ["book", "-p", "steps", "99999999999999999999999"],
    ["pretrain", "--batch-size", "99999999999999999999"],
    ["strategies", "--num-classes", "99999999999999999999"],
    # need timm or torch
    RUN + ["--task", "digits", "--strategy", "full", "--model", "vit_nonsense"],
    RUN + ["--task", "digits", "--strategy", "lora", "--hparam", "rank=0"],
    RUN + ["--task", "digits", "--strategy", "full", "--device", "cuda:7"],
    RUN + ["--task", "digits", "--strategy", "full", "--test-size", "9999999"],
    RUN + ["--task", "digits", "--strategy", "full", "--weights", "{foo}"],
    ["pretrain", "--init", "{empty}", "--out", "{tmp}/w.safetensors"],
    ["run", "--preset", "paper", "--task", "cifar10", "--strategy", "lora", "--quiet"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="processes per case (default 3)")
    args = parser.parse_args()
    results = tempfile.mkdtemp()
    tmp = Path(tempfile.mkdtemp())
    save_file({"foo": torch.zeros(3)}, tmp / "foo.safetensors")  # not the model's tensors
    (tmp / "empty.safetensors").write_bytes(b"")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
           "RTLIB_DATA": str(tmp / "data")}  # the paper's path offline, never the network
    names = {"foo": tmp / "foo.safetensors", "empty": tmp / "empty.safetensors", "tmp": tmp}
    rows = []
    for argv in CASES:
        argv = [a.format(**names) for a in argv]
        if argv[0] in ("run", "sweep") and "--results-dir" not in argv:
            argv = argv + ["--results-dir", results]
        times, message, status = [], "", None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "rtlib", *argv], capture_output=True,
                                  text=True, env=env)
            times.append(time.perf_counter() - t0)
            status = done.returncode
            message = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        rows.append((" ".join(argv[:6]), min(times), max(times), status, message))
    width = max(len(r[0]) for r in rows)
    print(f"{'python -m rtlib ...':<{width}}  {'fastest':>7}  {'slowest':>7}  exit  message")
    for name, fast, slow, status, message in rows:
        print(f"{name:<{width}}  {fast:6.2f}s  {slow:6.2f}s  {status:>4}  {message[:100]}")
    print(f"{len(rows)} cases x {args.repeat}; slowest answer {max(r[2] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
