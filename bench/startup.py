"""CPU benchmark: what a command pays before it does any work (imports, model loading), tiny model.

Sets up once (not timed): WORK from the repository's sample_data/ (ingest + masks build) and a tiny MODEL_DIR
(train, 1 step per stage). Then times fresh `medsoft-aug` processes (the entry point's own code path, one torch
thread), each ``--repeats`` times, and prints medians:

  --help                `medsoft-aug --help`
  balance --dry-run     the plan as JSON (must load no model)
  balance: ready        process start -> the first progress line of generation ("balance: 0/N": imports, the
                        plan, model loading and the real rows' copies done)
  balance: 1st batch    process start -> the first finished batch (``--steps 2 --batch-size 4``)
  balance: load_model_s as balance.json records it (building the Generator from MODEL_DIR)
  train: 1st step       process start -> the first optimizer step of `train --max-steps 1` (MSC stage)
  train: total          the whole `train --max-steps 1` (both stages)

(and the CPU seconds of the --help, dry-run and whole balance / train processes: on a shared machine the wall
times grow with the load, the CPU times much less)

and, from one `python -X importtime` run of each of `--help`, `balance --dry-run`, `balance` and `train`, the
seconds spent importing and the heavy packages imported with the cumulative seconds of each (torch, diffusers,
open_clip, torchvision, highdicom, matplotlib, sklearn, ...): a command should import only what it uses.

Usage: python bench/startup.py [--repeats 5] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from medsoft_aug.cli.app import main; main()"]
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "torchvision", "highdicom", "pydicom", "matplotlib",
         "sklearn", "scipy", "SimpleITK", "nibabel", "monai", "accelerate", "timm", "huggingface_hub", "PIL",
         "pandas", "rich")


def setup(root: Path) -> tuple[Path, Path]:
    """(WORK, MODEL_DIR) from the repository's sample data, with a 1-step tiny model."""
    from medsoft_aug import api
    from medsoft_aug.demo import DEMO_GEOMETRY, find_sample_data

    data, work, model = find_sample_data(root), root / "work", root / "model"
    api.ingest(data / "labels.csv", data, work)
    api.build_masks(work)
    api.train(work, model, max_steps=1, device="cpu", geometry=DEMO_GEOMETRY, checkpoint_every=0)
    return work, model


def timed(args: list[str], marks: dict[str, str], env: dict[str, str]) -> dict[str, float]:
    """Run the CLI with ``args``; seconds from start to the first stderr line matching each of ``marks`` (regex),
    and to the end (``total``)."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=env["BENCH_CWD"])
    seen: dict[str, float] = {}
    for line in proc.stderr:
        for name, pattern in marks.items():
            if name not in seen and re.search(pattern, line):
                seen[name] = time.perf_counter() - t0
    if proc.wait():
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode})")
    return {**seen, "total": time.perf_counter() - t0, "cpu": _children_cpu() - cpu0}


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: less sensitive to a shared machine's load."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def import_profile(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """(seconds of all imports, {HEAVY package: cumulative seconds of its own import}) of one run of ``args``;
    packages nest (diffusers' time includes the transformers it imports), so the figures do not add up."""
    r = subprocess.run([sys.executable, "-X", "importtime", *CLI[1:], *args], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, env=env, cwd=env["BENCH_CWD"])
    total, heavy = 0.0, {}
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$", line)
        if not m:
            continue
        if not m.group(3):
            total += int(m.group(2)) / 1e6                  # top-level imports hold every nested one
        if m.group(4) in HEAVY and m.group(4) not in heavy:
            heavy[m.group(4)] = int(m.group(2)) / 1e6
    return total, heavy


def print_import_profiles(work: Path, model: Path, root: Path, env: dict[str, str]) -> None:
    for name, args in (("--help", ["--help"]),
                       ("balance --dry-run", ["balance", str(work), "--dry-run"]),
                       ("balance", ["--threads", "1", "balance", str(work), "--model", str(model), "-o",
                                    str(root / "out_profile"), "--steps", "2", "--batch-size", "4", "--device", "cpu"]),
                       ("train", ["--threads", "1", "train", str(work), "-o", str(root / "model_profile"),
                                  "--max-steps", "1", "--device", "cpu", "--checkpoint-every", "0", "--geometry",
                                  "pad"])):
        total, heavy = import_profile(args, env)
        ranked = sorted(heavy.items(), key=lambda kv: -kv[1])
        print(f"imports of {name}: {total:.2f} s in all; " + (", ".join(f"{p} {t:.2f}" for p, t in ranked) or
                                                              "none of the heavy packages"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="keep the folders here (default: a temp dir)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    root = a.keep or Path(tempfile.mkdtemp(prefix="startup_"))
    root.mkdir(parents=True, exist_ok=True)
    import medsoft_aug

    # The children run the medsoft_aug this process imported (not whatever `python -c` finds in their cwd).
    code = str(Path(medsoft_aug.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100", "BENCH_CWD": str(root),
           "PYTHONPATH": os.pathsep.join([code, *filter(None, [os.environ.get("PYTHONPATH")])])}
    print(f"medsoft_aug from {code}", flush=True)
    try:
        work, model = setup(root)
        runs: dict[str, list[float]] = {}

        def add(name: str, value: float) -> None:
            runs.setdefault(name, []).append(value)

        for i in range(a.repeats):
            t = timed(["--help"], {}, env)
            add("--help", t["total"])
            add("--help (CPU)", t["cpu"])
            t = timed(["balance", str(work), "--dry-run"], {}, env)
            add("balance --dry-run", t["total"])
            add("balance --dry-run (CPU)", t["cpu"])
            out = root / f"out_{i}"
            t = timed(["--threads", "1", "balance", str(work), "--model", str(model), "-o", str(out), "--steps", "2",
                       "--batch-size", "4", "--device", "cpu"],
                      {"ready": r"^balance: 0/\d+", "first": r"^balance: [1-9]\d*/\d+"}, env)
            add("balance: ready", t["ready"])
            add("balance: 1st batch", t["first"])
            add("balance: total", t["total"])
            add("balance: total (CPU)", t["cpu"])
            add("balance: load_model_s", json.loads((out / "balance.json").read_text())["timings"]["load_model_s"])
            shutil.rmtree(out)
            m = root / f"model_{i}"
            t = timed(["--threads", "1", "train", str(work), "-o", str(m), "--max-steps", "1", "--device", "cpu",
                       "--checkpoint-every", "0", "--geometry", "pad"], {"first": r"^train msc: [1-9]"}, env)
            add("train: 1st step", t.get("first", float("nan")))
            add("train: total", t["total"])
            add("train: total (CPU)", t["cpu"])
            shutil.rmtree(m)
        print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
              f"torch {torch.__version__} (1 thread), load average {os.getloadavg()[0]:.1f}; "
              f"median of {a.repeats} (min-max)")
        for name, vals in runs.items():
            print(f"  {name:<24} {statistics.median(vals):7.2f} s   ({min(vals):.2f}-{max(vals):.2f})")
        print_import_profiles(work, model, root, env)
    finally:
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
