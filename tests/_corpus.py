"""A corpus of damaged inputs derived from the project's own phantom generator (the committed ``sample_data/``,
written by ``python -m medsoft_aug.sample_data``): truncated, bit-flipped, empty and random-byte DICOM, NIfTI
and CSV files, escaping paths, out-of-range values, and damaged WORK folders for ``masks build``.

Each :class:`Case` is one CLI invocation. ``sample`` names the damaged sample when the damage is per sample
(the run must then list it as failed, exit 4, and leave it out of the outputs); table-level damage must end
in exit 3. Every damage here is meant to be detected: none is a bit flip that leaves a valid image.
"""
from __future__ import annotations

import csv
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

GOOD_PNG = "good/normal.png"
LABEL_COLS = ["sample_id", "image", "label", "seg", "level", "x", "y", "slice", "split", "patient_id"]


@dataclass
class Case:
    name: str
    argv: list[str]
    out: Path                       # the folder the command writes (WORK)
    sample: Optional[str] = None    # the damaged sample (per-sample damage), None for table-level damage
    codes: tuple[int, ...] = (3, 4)
    outputs: tuple[str, ...] = ("slices", "seg")   # output folders (under ``out``) where no file may name it


def _csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=LABEL_COLS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in LABEL_COLS})
    return path


def _good_row() -> dict:
    return {"sample_id": "good", "image": GOOD_PNG, "label": "normal", "patient_id": "G"}


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


def _value_pos(data: bytes, tag: bytes) -> int:
    """Offset of the first value byte of an explicit-VR little-endian element with a 2-byte length."""
    i = data.index(tag)
    return i + 8


def _dicom_damages(rng: np.random.Generator) -> dict[str, Callable[[bytes], bytes]]:
    rows, cols, bits = b"\x28\x00\x10\x00US", b"\x28\x00\x11\x00US", b"\x28\x00\x00\x01US"
    d: dict[str, Callable[[bytes], bytes]] = {
        f"trunc{int(f * 100)}": (lambda f: lambda b: b[: int(len(b) * f)])(f) for f in (0.02, 0.1, 0.3, 0.6, 0.9, 0.999)}
    d.update({
        "empty": lambda b: b"",
        "random_same_size": lambda b: rng.integers(0, 256, len(b), dtype=np.uint8).tobytes(),
        "random_small": lambda b: rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
        "preamble_then_random": lambda b: b[:132] + rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "flip_rows": lambda b: _flip(b, _value_pos(b, rows), 2),
        "flip_columns": lambda b: _flip(b, _value_pos(b, cols), 1),
        "flip_bits_allocated": lambda b: _flip(b, _value_pos(b, bits), 0),
        "flip_ts_uid": lambda b: _flip(b, b.index(b"1.2.840.10008.1.2") + 4, 3),
    })
    return d


def _nifti_gz_damages(rng: np.random.Generator) -> dict[str, Callable[[bytes], bytes]]:
    d: dict[str, Callable[[bytes], bytes]] = {
        f"trunc{int(f * 100)}": (lambda f: lambda b: b[: int(len(b) * f)])(f) for f in (0.01, 0.2, 0.5, 0.8, 0.99)}
    d.update({
        "empty": lambda b: b"",
        "random": lambda b: rng.integers(0, 256, len(b), dtype=np.uint8).tobytes(),
        "gzip_magic_only": lambda b: b[:10],
        "flip_body_early": lambda b: _flip(b, 40, 5),
        "flip_body_mid": lambda b: _flip(b, len(b) // 2, 3),
        "flip_crc": lambda b: _flip(b, len(b) - 6, 0),
        "flip_isize": lambda b: _flip(b, len(b) - 2, 4),
    })
    return d


def _nifti_value_damages(src: Path, out: Path) -> dict[str, Path]:
    """Readable NIfTI files (nibabel) with invalid contents: non-finite, complex, bad transforms, bad headers."""
    import nibabel as nib

    img = nib.load(str(src))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    made: dict[str, Path] = {}

    def save(name: str, arr: np.ndarray, affine=None, raw: Optional[Callable[[bytes], bytes]] = None) -> None:
        path = out / f"{name}.nii"
        nib.save(nib.Nifti1Image(arr, img.affine if affine is None else affine), str(path))
        if raw is not None:
            path.write_bytes(raw(path.read_bytes()))
        made[name] = path

    nan = data.copy()
    nan[0, 3, 4] = np.nan
    save("nan_voxel", nan)
    inf = data.copy()
    inf[2, 60, 60] = -np.inf
    save("inf_voxel", inf)
    save("complex", data.astype(np.complex64))
    sform = lambda rows: lambda b: (b[:252] + (0).to_bytes(2, "little") + (1).to_bytes(2, "little") + b[256:280]
                                    + np.asarray(rows, np.float32).tobytes() + b[328:])  # noqa: E731
    save("nan_affine", data, raw=sform(np.full(12, np.nan)))
    save("singular_affine", data, raw=sform(np.zeros(12)))
    save("trunc_header", data, raw=lambda b: b[:200])
    save("trunc_data", data, raw=lambda b: b[: len(b) // 2])
    save("bad_datatype", data, raw=lambda b: b[:70] + (9999).to_bytes(2, "little") + b[72:])
    save("zero_dim", data, raw=lambda b: b[:42] + (0).to_bytes(2, "little") + b[44:])
    save("negative_dim", data, raw=lambda b: b[:44] + (-3).to_bytes(2, "little", signed=True) + b[46:])
    save("huge_vox_offset", data, raw=lambda b: b[:108] + np.float32(1e12).tobytes() + b[112:])
    save("four_d", np.stack([data, data], axis=-1))
    save("string_dtype", data, raw=lambda b: b[:70] + (2048).to_bytes(2, "little") + b[72:])  # complex256
    return made


def build_ingest_cases(sample_data: Path, root: Path) -> list[Case]:
    """Damaged inputs for ``ingest``: one images root, one labels CSV per case (a good row + the damaged one)."""
    from PIL import Image

    rng = np.random.default_rng(2024)
    images = root / "images"
    (images / "good").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 65535, (24, 20), dtype=np.uint16)).save(images / GOOD_PNG)
    dmg = images / "dmg"
    dmg.mkdir()
    cases: list[Case] = []

    def ingest_case(name: str, rows: list[dict], sample: Optional[str], codes=(3, 4)) -> None:
        labels = _csv(root / "csv" / f"{name}.csv", rows)
        out = root / "out" / name
        cases.append(Case(name, ["ingest", "--labels", str(labels), "--images", str(images), "--out", str(out)],
                          out, sample, codes))

    def one(name: str, image: str, **extra) -> None:
        ingest_case(name, [_good_row(), {"sample_id": "bad", "image": image, "label": "benign", **extra}], "bad")

    # DICOM: one slice of a native and of an RLE series damaged; the single damaged file read on its own too
    for series in ("phantom_001", "phantom_003"):
        src = sample_data / "images" / series
        for dname, fn in _dicom_damages(rng).items():
            if series == "phantom_003" and dname.startswith("flip_bits"):
                continue  # RLE: BitsAllocated is checked by the decoder like the native path
            folder = dmg / f"{series}_{dname}"
            shutil.copytree(src, folder)
            target = sorted(folder.glob("*.dcm"))[2]
            target.write_bytes(fn(target.read_bytes()))
            one(f"dicom_series_{series}_{dname}", f"dmg/{folder.name}")
            if series == "phantom_001" and dname in ("trunc30", "trunc90", "empty", "random_small", "flip_rows"):
                one(f"dicom_file_{dname}", f"dmg/{folder.name}/{target.name}")
    # NIfTI .nii.gz bytes, and readable files with invalid values or headers
    src = sample_data / "images" / "phantom_002.nii.gz"
    for dname, fn in _nifti_gz_damages(rng).items():
        path = dmg / f"nifti_{dname}.nii.gz"
        path.write_bytes(fn(src.read_bytes()))
        one(f"nifti_gz_{dname}", f"dmg/{path.name}")
    for dname, path in _nifti_value_damages(src, dmg).items():
        one(f"nifti_{dname}", f"dmg/{path.name}")
    # label maps: the image is fine, its seg is damaged
    seg_src = sample_data / "segs" / "phantom_002_seg.nii.gz"
    shutil.copy(src, images / "good" / "p2.nii.gz")
    for dname, fn in list(_nifti_gz_damages(rng).items())[:4]:
        path = dmg / f"seg_{dname}.nii.gz"
        path.write_bytes(fn(seg_src.read_bytes()))
        one(f"seg_{dname}", "good/p2.nii.gz", seg=f"dmg/{path.name}", level="L1")
    import nibabel as nib

    seg = nib.load(str(seg_src))
    nanseg = np.asanyarray(seg.dataobj).astype(np.float32)
    nanseg[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nanseg, seg.affine), str(dmg / "seg_nan.nii.gz"))
    one("seg_nan", "good/p2.nii.gz", seg="dmg/seg_nan.nii.gz", level="L1")
    nib.save(nib.Nifti1Image(np.zeros((3, 7, 9), np.uint8), seg.affine), str(dmg / "seg_shape.nii.gz"))
    one("seg_wrong_shape", "good/p2.nii.gz", seg="dmg/seg_shape.nii.gz", level="L1")
    # other image damage: raster bytes, odd paths
    png = (images / GOOD_PNG).read_bytes()
    for dname, data in {"png_trunc": png[: len(png) // 2], "png_empty": b"", "png_random": rng.integers(
            0, 256, 500, dtype=np.uint8).tobytes(), "png_flip_crc": _flip(png, 29, 0)}.items():
        (dmg / f"{dname}.png").write_bytes(data)
        one(dname, f"dmg/{dname}.png")
    (dmg / "no_dicom").mkdir()
    (dmg / "no_dicom" / "notes.txt").write_text("x")
    (dmg / "a_folder.nii.gz").mkdir()
    for dname, image in {"path_parent": "../../etc/passwd", "path_absolute": "/etc/passwd",
                         "path_dotdot_inside": "good/../../images/../../x.nii.gz", "path_windows": "C:\\x\\y.dcm",
                         "path_missing": "nope/none.nii.gz", "path_folder_without_dicom": "dmg/no_dicom",
                         "path_folder_named_nii": "dmg/a_folder.nii.gz",
                         "path_unsupported": "dmg/no_dicom/notes.txt"}.items():
        one(dname, image)
    # out-of-range and malformed values in rows
    for dname, extra in {"slice_negative": {"slice": "-1"}, "slice_too_big": {"slice": "999"},
                         "slice_fraction": {"slice": "1.5"}, "slice_text": {"slice": "abc"},
                         "x_huge": {"x": "1e9", "y": "3"}, "x_nan": {"x": "nan", "y": "3"},
                         "y_inf": {"x": "3", "y": "inf"}, "x_without_y": {"x": "3"},
                         "x_negative": {"x": "-4", "y": "3"}}.items():
        one(dname, "good/p2.nii.gz", **extra)
    ingest_case("label_empty", [_good_row(), {"sample_id": "bad", "image": GOOD_PNG, "label": ""}], "bad")
    # table-level damage of the labels CSV: exit 3
    good = _csv(root / "csv" / "_good.csv", [_good_row(), {"sample_id": "p2", "image": "good/p2.nii.gz",
                                                           "label": "benign"}]).read_bytes()
    raw = {"csv_empty": b"", "csv_header_only": good.split(b"\n")[0] + b"\n", "csv_bom_only": b"\xef\xbb\xbf",
           "csv_random": rng.integers(0, 256, 400, dtype=np.uint8).tobytes(),
           "csv_nul": good.replace(b"benign", b"ben\x00ign"), "csv_latin1": good.replace(b"benign", b"b\xe9nign"),
           "csv_cut_mid_row": good[: len(good) - 7], "csv_unbalanced_quote": good.replace(b"p2,", b'"p2,', 1),
           "csv_missing_label_column": good.replace(b",label,", b",lbl,", 1),
           "csv_duplicate_column": good.replace(b",seg,", b",label,", 1),
           "csv_extra_field": good.rstrip(b"\n") + b",extra\n",
           "csv_split_bogus": good.replace(b",,G", b",bogus,G", 1),
           "csv_unsafe_sample_id": good.replace(b"p2,", b"../p2,", 1),
           "csv_duplicate_sample_id": good.replace(b"p2,", b"good,", 1),
           "csv_no_normal_class": good.replace(b"normal", b"other")}
    for dname, data in raw.items():
        path = root / "csv" / f"{dname}.csv"
        path.write_bytes(data)
        out = root / "out" / dname
        cases.append(Case(dname, ["ingest", "--labels", str(path), "--images", str(images), "--out", str(out)],
                          out, None, (3,)))
    return cases


def build_masks_cases(root: Path) -> list[Case]:
    """Damaged WORK folders for ``masks build``: index.csv, slice/seg arrays, rows and output paths."""
    import pandas as pd

    from _masks_helpers import make_work, phantom_seg

    rng = np.random.default_rng(7)
    base = make_work(root / "_base", [dict(sample_id="good", x=20, y=20, spacing=(0.7, 0.7)),
                                      dict(sample_id="bad", seg=phantom_seg(shape=(64, 48)), level="L2")])
    index = (base / "index.csv").read_bytes()
    cases: list[Case] = []

    def work_case(name: str, damage: Callable[[Path], None], sample: Optional[str], codes=(3, 4)) -> None:
        work = root / name
        shutil.copytree(base, work)
        damage(work)
        cases.append(Case(name, ["masks", "build", str(work)], work, sample, codes, ("masks",)))

    def write(rel: str, data: bytes) -> Callable[[Path], None]:
        return lambda w: (w / rel).write_bytes(data)

    def row(**changes) -> Callable[[Path], None]:
        def f(w: Path) -> None:
            df = pd.read_csv(w / "index.csv", dtype=str, keep_default_na=False)
            for k, v in changes.items():
                df.loc[df.sample_id == "bad", k] = v
            df.to_csv(w / "index.csv", index=False)
        return f

    for dname, data in {"index_empty": b"", "index_cut": index[: len(index) - 30], "index_nul": index[:50] + b"\0" +
                        index[50:], "index_latin1": index.replace(b"good", b"g\xf6od", 1),
                        "index_random": rng.integers(0, 256, 700, dtype=np.uint8).tobytes(),
                        "index_no_columns": b"a,b\n1,2\n", "index_header_only": index.split(b"\n")[0] + b"\n",
                        "index_duplicate_ids": index.replace(b"\nbad,", b"\ngood,", 1)}.items():
        work_case(dname, write("index.csv", data), None, (3,))
    work_case("masks_is_a_file", write("masks", b"x"), None, (3,))
    work_case("masks_csv_is_a_folder", lambda w: (w / "masks.csv").mkdir(), None, (3,))
    seg = (base / "seg" / "bad.npy").read_bytes()
    for dname, data in {"seg_trunc": seg[: len(seg) // 2], "seg_empty": b"", "seg_random": rng.integers(
            0, 256, 300, dtype=np.uint8).tobytes(), "seg_header_flip": _flip(seg, 30, 2)}.items():
        work_case(dname, write("seg/bad.npy", data), "bad")
    for dname, arr in {"seg_nan": np.full((64, 48), np.nan, np.float32),
                       "seg_fractional": np.full((64, 48), 20.5, np.float32),
                       "seg_negative": np.full((64, 48), -20.0, np.float32),
                       "seg_3d": np.zeros((2, 64, 48), np.float32), "seg_wrong_shape": np.zeros((10, 10), np.float32),
                       "seg_object": np.array([{"a": 1}], dtype=object)}.items():
        def save(w: Path, arr=arr) -> None:
            np.save(w / "seg" / "bad.npy", arr, allow_pickle=True)
        work_case(dname, save, "bad")
    work_case("slice_trunc", write("slices/bad.npy", (base / "slices/bad.npy").read_bytes()[:90]), "bad")
    work_case("slice_missing", lambda w: (w / "slices/bad.npy").unlink(), "bad")
    for dname, changes in {"level_L99": {"level": "L99"}, "level_garbage": {"level": "vertebra??"},
                           "level_absent_from_seg": {"level": "C1"}, "x_outside": {"seg": "", "x": "999", "y": "3"},
                           "x_nan": {"seg": "", "x": "nan", "y": "3"}, "spacing_zero": {"spacing_row": "0"},
                           "spacing_text": {"spacing_row": "abc", "spacing_col": "abc"},
                           "image_escapes": {"image": "../../etc/passwd"}, "seg_escapes": {"seg": "../../x.npy"},
                           "image_absolute": {"image": "/etc/passwd"}}.items():
        work_case(dname, row(**changes), "bad")
    return cases
