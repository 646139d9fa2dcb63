"""CPU benchmark: `balance` with the background writer (generate/writeback.py) vs the sequential loop, same run.

Builds one synthetic WORK (20 normal + 4 benign training slices at ``--size`` px native, so writing the
16-bit PNG, the float32 mask and their hashes costs what a real slice does; the plan is 16 synthetic samples),
trains a tiny MODEL_DIR once (1 step per stage), then runs `balance` (tiny model, ``--steps`` DDIM steps,
``--batch-size``) into fresh OUT folders, alternating ``WRITE_AHEAD`` = 1 (the default: batch i written while
batch i+1 is generated) and 0 (the old sequential loop), ``--reps`` times each. Prints the median generation
seconds (balance.json ``timings.generate_s``: generation + writing + ledger) and img/s of each, their ratio, and
checks that the two modes wrote byte-identical files.

Usage: python bench/balance_overlap.py [--size 512] [--steps 4] [--batch-size 4] [--reps 3]
One torch thread (the writer thread can use the second core).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from balance_scaling import make_work


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "balance.json" and not p.name.endswith(".lock")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from medsoft_aug.api import balance, train
    from medsoft_aug.generate import batches

    root = Path(tempfile.mkdtemp(prefix="balance_overlap_"))
    try:
        work = make_work(root / "work", 24, size=args.size)
        model = root / "model"
        train(work, model, max_steps=1, batch_size=4, device="cpu", checkpoint_every=0)
        print(f"machine: {platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, python "
              f"{platform.python_version()}, torch {torch.__version__} (1 thread); {args.size} px slices, "
              f"{args.steps} steps, batch {args.batch_size}", flush=True)
        times: dict[int, list[float]] = {1: [], 0: []}
        written: dict[int, dict[str, bytes]] = {}
        for rep in range(args.reps):
            for ahead in (1, 0):
                batches.WRITE_AHEAD = ahead
                out = root / f"out_{ahead}_{rep}"
                res = balance(work, model, out, steps=args.steps, batch_size=args.batch_size, device="cpu")
                times[ahead].append(json.loads((out / "balance.json").read_text())["timings"]["generate_s"])
                written[ahead] = files(out)
                shutil.rmtree(out)
        n = res["generated"]
        med = {a: statistics.median(t) for a, t in times.items()}
        for a, label in ((0, "sequential (WRITE_AHEAD=0)"), (1, "background writer (default)")):
            print(f"{label:30s} generate_s median {med[a]:7.3f}  {n / med[a]:6.2f} img/s  runs {times[a]}")
        print(f"speed-up {med[0] / med[1]:.2f}x; outputs byte-identical: {written[0] == written[1]}")
        print(json.dumps({"generated": n, "median_s": med, "times": times, "identical": written[0] == written[1]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
