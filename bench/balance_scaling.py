"""CPU benchmark: the per-sample cost of `balance` must not grow with the size of the dataset (manifest rows).

Builds synthetic WORK folders with a fixed training split (20 normal + 4 benign slices, 64x64: the plan is always
16 synthetic samples) and N - 24 further real rows in the test split (hard links to a few slices and masks, as
WORK allows; one file per 10k rows), trains a tiny MODEL_DIR once (1 step per stage), then runs `balance` into a fresh OUT for each N
(tiny model, 2 DDIM steps, batch size 1: one resume-ledger append per sample, the case where a per-batch cost that
grows with N shows most). From the progress callbacks it prints, per N:

  per-sample   median seconds between two finished samples (generation + writing + the ledger append)
  real-copy    median seconds per real row copied into OUT (16-bit PNG by threads, mask hard-linked), once per OUT
  rewrite      seconds one full `manifest.write_manifest` of N rows takes: what every batch paid before the
               append-only ledger (the manifest is now written once, at the end)

Usage: python bench/balance_scaling.py [--sizes 100 1000 10000 100000] [--keep DIR]
One thread for torch. Most of the time is the one-off copy of the 100k real rows (11 min in all on the shared
2-core CPU at load average 10, 2026-12-01); ``--sizes 100 1000 10000`` takes about a minute.
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
import time
from pathlib import Path

import numpy as np
import pandas as pd


def make_work(work: Path, n_rows: int, size: int = 64, seed: int = 0) -> Path:
    """A WORK with 20 normal + 4 benign training rows of their own and n_rows - 24 test rows sharing one file."""
    from medsoft_aug.fsutil import atomic_write_json
    from medsoft_aug.workdir import INDEX_COLUMNS, MASK_COLUMNS

    rng = np.random.default_rng(seed)
    (work / "slices").mkdir(parents=True)
    (work / "masks").mkdir()
    yy, xx = np.mgrid[0:size, 0:size]
    labels = ["normal"] * 20 + ["benign"] * 4 + ["normal"] * max(0, n_rows - 24)
    idx, msk = [], []
    for i, label in enumerate(labels):
        sid = f"s{i:06d}"
        split = "train" if i < 24 else "test"
        if i <= 24 or (i - 24) % 10_000 == 0:      # own files: training rows, one test file per 10k (link limits)
            np.save(work / "slices" / f"{sid}.npy", rng.uniform(0.2, 0.8, (size, size)).astype(np.float32))
            cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
            m = np.exp(-(((yy - cy) / 6.0) ** 2 + ((xx - cx) / 6.0) ** 2)).astype(np.float32)
            np.save(work / "masks" / f"{sid}.npy", m)
            shared = sid
        else:
            os.link(work / "slices" / f"{shared}.npy", work / "slices" / f"{sid}.npy")
            os.link(work / "masks" / f"{shared}.npy", work / "masks" / f"{sid}.npy")
        idx.append({c: "" for c in INDEX_COLUMNS} | {
            "sample_id": sid, "patient_id": f"p{i}", "study_id": f"st{i}", "label": label, "split": split,
            "image": f"slices/{sid}.npy", "level": "L3", "height": str(size), "width": str(size),
            "spacing_row": "1.0", "spacing_col": "1.0", "description": "bright round lesion" if label == "benign"
            else ""})
        msk.append({c: "" for c in MASK_COLUMNS} | {"sample_id": sid, "mask": f"masks/{sid}.npy", "status": "ok",
                                                   "mask_source": "coords", "level": "L3"})
    pd.DataFrame(idx, columns=INDEX_COLUMNS).to_csv(work / "index.csv", index=False)
    pd.DataFrame(msk, columns=MASK_COLUMNS).to_csv(work / "masks.csv", index=False)
    atomic_write_json(work / "ingest.json", {"normal_class": "normal"})
    return work


def run_balance(work: Path, model: Path, out: Path) -> dict:
    """One balance run; per-sample and per-real-row times from the progress callbacks."""
    from medsoft_aug.api import balance

    marks: dict[str, list[tuple[float, int]]] = {"balance": [], "copy real samples": []}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage in marks:
            marks[stage].append((time.perf_counter(), done))

    t0 = time.perf_counter()
    res = balance(work, model, out, steps=2, batch_size=1, device="cpu", on_progress=on_progress)
    total = time.perf_counter() - t0
    per_sample = [b[0] - a[0] for a, b in zip(marks["balance"], marks["balance"][1:])]
    copy = marks["copy real samples"]
    first_copy = copy[0][0] - t0                      # includes the plan and model loading: not a copy figure
    per_row = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(copy, copy[1:])] or [first_copy / max(copy[0][1], 1)]
    return {"generated": res["generated"], "total_s": total, "per_sample_s": statistics.median(per_sample),
            "per_real_row_s": statistics.median(per_row)}


def rewrite_cost(out: Path) -> float:
    """Seconds one rewrite of the whole manifest takes (what the old code paid after every batch)."""
    from medsoft_aug.manifest import read_manifest, write_manifest

    rows = read_manifest(out / "manifest.csv")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        write_manifest(out / "bench_rewrite.csv", rows)
        times.append(time.perf_counter() - t)
    (out / "bench_rewrite.csv").unlink()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    ap.add_argument("--keep", type=Path, default=None, help="keep the folders here (default: a temp dir)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from medsoft_aug.api import train

    root = args.keep or Path(tempfile.mkdtemp(prefix="balance_scaling_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        small = make_work(root / "work_train", 24)
        model = root / "model"
        train(small, model, max_steps=1, batch_size=4, device="cpu", checkpoint_every=0)
        print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
              f"torch {torch.__version__} (1 thread)", flush=True)
        print(f"{'rows':>8} {'synthetic':>9} {'per-sample s':>13} {'real-copy ms/row':>17} {'old rewrite s':>14}"
              f" {'total s':>8}", flush=True)
        results = []
        for n in args.sizes:
            work = make_work(root / f"work_{n}", n)
            out = root / f"out_{n}"
            r = run_balance(work, model, out)
            r.update(rows=n, rewrite_s=rewrite_cost(out))
            results.append(r)
            print(f"{n:>8} {r['generated']:>9} {r['per_sample_s']:>13.3f} {1000 * r['per_real_row_s']:>17.3f}"
                  f" {r['rewrite_s']:>14.3f} {r['total_s']:>8.1f}", flush=True)
            shutil.rmtree(work)
            shutil.rmtree(out)
        base = results[0]["per_sample_s"]
        print("per-sample cost relative to the smallest WORK: "
              + ", ".join(f"{r['rows']}: {r['per_sample_s'] / base:.2f}x" for r in results))
        print(json.dumps(results))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
