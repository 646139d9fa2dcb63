"""CPU benchmark of `ingest` and `masks build`: time against a raw read of the same files, and peak memory.

Data: the phantom data set at several sizes (default 32 and 96 studies, 128 x 128 slices; half DICOM series,
three quarters of them RLE, half NIfTI), and the DICOM studies of the first size upscaled to 512 x 512 per slice
(``--large``, pixel values repeated 4 x 4, same transfer syntax) as real MR series are. Each measurement runs
in a fresh subprocess (peak RSS is its own), REPEATS times; medians are printed:

* raw read: every file under the images folder read into memory (bytes only), the floor any reader pays;
  the stages are timed after their modules are imported (the import time, paid once per process whatever the
  data, is printed apart);
* read: the reading part of ingest alone (each sample's volume opened and its slice taken, as ingest does),
  and the same reading every volume whole;
* ingest: ``api.ingest`` (DICOM: one header pass reading each file once, then only the used slices decoded);
* ingest, whole volumes: the same with every volume decoded whole (``io.reader.read_image``: what ingest did
  before it decoded only the slices it uses), for comparison;
* masks: ``api.build_masks`` on the ingested WORK.

Usage: python bench/ingest_masks_cpu.py [--sizes 32 96] [--repeats 3] [--no-large] [--keep DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
stage, labels, images, work = sys.argv[1:5]
t = time.perf_counter()
if stage == "raw":
    n = sum(len(p.read_bytes()) for p in sorted(Path(images).rglob("*")) if p.is_file())
else:
    from medsoft_aug.api import build_masks, ingest
    import medsoft_aug.ingest.stage, medsoft_aug.io.reader, medsoft_aug.masks.stage, nibabel, pydicom.pixels
    imports = time.perf_counter() - t            # paid once per process, whatever the data: not timed below
    if stage.endswith("-whole"):
        from medsoft_aug.io import reader
        reader.open_image = reader.read_image
    t = time.perf_counter()
    if stage.startswith("read"):                 # the reading part of ingest alone: each sample's slice
        import csv
        from medsoft_aug.ingest.process import SampleReader
        from medsoft_aug.ingest.slicing import apply_geometry, make_geometry
        sr, n = SampleReader(Path(images)), 0
        for r in csv.DictReader(open(labels, newline="", encoding="utf-8")):
            img = sr.read(r["image"], label_map=False)
            idx = img.shape[0] // 2 if img.ndim == 3 else None
            n += apply_geometry(getattr(img, "array", img), make_geometry(img.shape, idx, img.affine)).size > 0
    elif stage.startswith("ingest"):
        n = ingest(labels, images, work, force=True).n_samples
    else:
        n = build_masks(work, force=True).ok
dt = time.perf_counter() - t
print(json.dumps({"n": n, "seconds": dt, "imports": locals().get("imports", 0.0), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
STAGES = ("raw", "read", "read-whole", "ingest", "ingest-whole", "masks")


def run_child(stage: str, labels: Path, images: Path, work: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, stage, str(labels), str(images), str(work)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_large(src: Path, out: Path, factor: int = 4) -> Path:
    """The DICOM series studies of ``src`` with every slice upscaled ``factor`` x (pixel repetition), same
    headers; native slices stay native, RLE ones become JPEG 2000 lossless; labels.csv keeps their rows (x, y
    scaled; no seg: its grid is the small one)."""
    import numpy as np
    import pydicom
    from pydicom.uid import JPEG2000Lossless, RLELossless

    with open(src / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if (src / r["image"]).is_dir()]
    for r in rows:
        for f in sorted((src / r["image"]).iterdir()):
            ds = pydicom.dcmread(f)
            pix = np.kron(ds.pixel_array, np.ones((factor, factor), dtype=ds.pixel_array.dtype))
            compressed = ds.file_meta.TransferSyntaxUID == RLELossless
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
            ds.Rows, ds.Columns = pix.shape
            ds.PixelSpacing = [float(v) / factor for v in ds.PixelSpacing]
            ds.PixelData = pix.astype("<u2").tobytes()
            if compressed:                                 # JPEG 2000 lossless, as many real MR archives
                ds.compress(JPEG2000Lossless, pix, generate_instance_uid=False)
            (out / r["image"]).mkdir(parents=True, exist_ok=True)
            ds.save_as(out / r["image"] / f.name, enforce_file_format=True)
        r.update(seg="", x=f"{float(r['x']) * factor:g}", y=f"{float(r['y']) * factor:g}")
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out


def measure(name: str, data: Path, root: Path, repeats: int) -> dict:
    work = root / f"work-{name}"
    row: dict = {"data": name, "bytes": sum(p.stat().st_size for p in data.rglob("*") if p.is_file())}
    for stage in STAGES:
        runs = [run_child(stage, data / "labels.csv", data, work) for _ in range(repeats)]
        row[stage] = statistics.median(r["seconds"] for r in runs)
        row[f"{stage}_rss"] = statistics.median(r["peak_rss_mib"] for r in runs)
        if stage == "ingest":
            row["samples"] = runs[0]["n"]
            row["imports"] = statistics.median(r["imports"] for r in runs)
    for stage in STAGES[1:-1]:
        row[f"{stage}_x_raw"] = row[stage] / row["raw"]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 96], help="numbers of phantom studies")
    ap.add_argument("--repeats", type=int, default=3, help="runs per stage and size (median reported)")
    ap.add_argument("--no-large", action="store_true", help="skip the 512 x 512 DICOM set")
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
            rows.append(measure(f"phantom {n} (128 px)", data, root, a.repeats))
        if not a.no_large:
            large = root / f"large{a.sizes[0]}"
            if not (large / "labels.csv").is_file():
                make_large(root / f"data{a.sizes[0]}", large)
            rows.append(measure(f"phantom {a.sizes[0]} DICOM only, 512 px", large, root, a.repeats))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nimports before ingest (not in the times below): {statistics.median(r['imports'] for r in rows):.2f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, load average {load:.1f}; medians of {a.repeats} runs, warm page cache")
    print(f"{'data':34s} {'samples':>7s} {'MiB':>6s} {'raw s':>7s} {'read s (x raw)':>15s} "
          f"{'whole (x raw)':>15s} {'ingest s (x raw)':>17s} {'whole (x raw)':>15s} {'masks s':>8s} "
          f"{'RSS ingest/whole/masks MiB':>27s}")
    for r in rows:
        rss = f"{r['ingest_rss']:.0f} / {r['ingest-whole_rss']:.0f} / {r['masks_rss']:.0f}"
        cells = " ".join(f"{r[k]:8.2f} ({r[k + '_x_raw']:4.0f})" for k in STAGES[1:-1])
        print(f"{r['data']:34s} {r['samples']:7d} {r['bytes'] / 2**20:6.1f} {r['raw']:7.3f} {cells} "
              f"{r['masks']:8.2f} {rss:>27s}")

if __name__ == "__main__":
    main()
