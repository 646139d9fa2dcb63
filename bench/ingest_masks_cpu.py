"""CPU benchmark of `ingest` and `masks build` throughput and peak memory on phantom data.

Generates the phantom data set at several sizes (default 32 and 96 studies), then runs each stage in a fresh
subprocess (so peak RSS is the stage's own) REPEATS times and prints median samples/s and peak RSS. Memory must
not grow with the number of studies: both stages stream one sample at a time.

Usage: python bench/ingest_masks_cpu.py [--sizes 32 96] [--repeats 3] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from medsoft_aug.api import ingest, build_masks
stage, a, b, c = sys.argv[1:5]
t = time.perf_counter()
if stage == "ingest":
    r = ingest(a + "/labels.csv", a, b, force=True)
    n = r.n_samples
else:
    r = build_masks(b, force=True)
    n = r.ok
dt = time.perf_counter() - t
print(json.dumps({"n": n, "seconds": dt, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(stage: str, data: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, stage, str(data), str(work), ""], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96], help="numbers of phantom studies")
    ap.add_argument("--repeats", type=int, default=3, help="runs per stage and size (median reported)")
    ap.add_argument("--keep", type=Path, default=None, help="keep generated data and WORK folders here")
    a = ap.parse_args()
    from medsoft_aug.api import make_sample_data

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="medsoft-bench-"))
    rows = []
    try:
        for n in a.sizes:
            data = root / f"data{n}"
            if not (data / "labels.csv").is_file():
                make_sample_data(data, n_studies=n, seed=0)
            work = root / f"work{n}"
            for stage in ("ingest", "masks"):
                runs = [run_child(stage, data, work) for _ in range(a.repeats)]
                secs = statistics.median(r["seconds"] for r in runs)
                rows.append({"stage": stage, "studies": n, "samples": runs[0]["n"], "median_s": secs,
                             "samples_per_s": runs[0]["n"] / secs,
                             "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs)})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'stage':8s} {'studies':>7s} {'samples':>7s} {'median s':>9s} {'samples/s':>10s} {'peak RSS MiB':>13s}")
    for r in rows:
        print(f"{r['stage']:8s} {r['studies']:7d} {r['samples']:7d} {r['median_s']:9.2f} {r['samples_per_s']:10.1f} "
              f"{r['peak_rss_mib']:13.0f}")


if __name__ == "__main__":
    main()
