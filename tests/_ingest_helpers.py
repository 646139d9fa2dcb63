"""Builders for ingest tests: tiny NIfTI / PNG / DICOM files and labels CSVs written in real on-disk formats."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

RSNA_CONDITIONS = ("spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
                   "left_subarticular_stenosis", "right_subarticular_stenosis")
RSNA_LEVELS = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")


def write_csv(path: Path, rows: Sequence[dict], columns: Optional[Sequence[str]] = None, crlf: bool = False) -> Path:
    columns = list(columns or rows[0].keys())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\r\n" if crlf else "\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def ras_affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def random_volume(rng: np.random.Generator, shape=(6, 20, 24)) -> np.ndarray:
    """Smooth-ish random positive volume (float32), never constant on any sagittal slice."""
    return (rng.random(shape) * 1000 + 50).astype(np.float32)


def write_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_dicom(path: Path, pixels: np.ndarray, *, instance: int = 1, series_uid: str = "1.2.3.4",
                study_uid: str = "1.2.3", position=(0.0, 0.0, 0.0), spacing=(0.5, 0.7)) -> Path:
    """A minimal valid single-frame MR DICOM (uint16, explicit VR little endian)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.PatientName = "Test^Secret"
    ds.PatientID = "SECRET-ID-123"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


def make_generic_dataset(root: Path, rng: np.random.Generator, n_patients: int = 6) -> dict:
    """images/ with NIfTI volumes (+ label maps) and PNGs, and labels.csv. Returns paths and the volumes."""
    images = root / "images"
    rows, vols = [], {}
    for p in range(n_patients):
        vol = random_volume(rng, (5, 16, 12))
        seg = ((rng.random(vol.shape) > 0.7) * rng.integers(1, 26)).astype(np.uint8)
        write_nifti(images / f"p{p}" / "t2.nii.gz", vol, ras_affine((2.0, 0.5, 0.6), (-5.0, 3.0, 1.0)))
        write_nifti(images / f"p{p}" / "seg.nii.gz", seg, ras_affine((2.0, 0.5, 0.6), (-5.0, 3.0, 1.0)))
        vols[f"p{p}/t2.nii.gz"] = (vol, seg)
        label = "normal" if p % 3 else ("benign" if p % 2 else "malignant")
        rows.append({"image": f"p{p}/t2.nii.gz", "label": label, "patient_id": f"P{p}", "seg": f"p{p}/seg.nii.gz",
                     "level": "L3", "x": "3", "y": "4.5", "description": f"lesion {p}" if label != "normal" else ""})
        rows.append({"image": f"p{p}/t2.nii.gz", "label": label, "patient_id": f"P{p}", "slice": "1",
                     "seg": f"p{p}/seg.nii.gz", "level": "L4"})
    png = rng.integers(0, 65535, size=(10, 14), dtype=np.uint16)
    write_png(images / "flat" / "x-ray 1.png", png)
    rows.append({"image": "flat/x-ray 1.png", "label": "normal", "patient_id": "P99"})
    labels = write_csv(root / "labels.csv", rows,
                       ["image", "label", "patient_id", "slice", "seg", "level", "x", "y", "description"])
    return {"images": images, "labels": labels, "rows": rows, "vols": vols, "png": png}


def make_rsna_dataset(root: Path, rng: np.random.Generator, n_studies: int = 4, crlf: bool = True) -> dict:
    """A tiny RSNA-2024-shaped dataset: three CSVs (CRLF, empty cells) and DICOM instances."""
    images = root / "train_images"
    train, coords, series = [], [], []
    sev_cycle = ["Normal/Mild", "Moderate", "Severe", "Normal/Mild", ""]
    k = 0
    for s in range(n_studies):
        study = str(1000 + s)
        row = {"study_id": study}
        for c in RSNA_CONDITIONS:
            for lv in RSNA_LEVELS:
                row[f"{c}_{lv}"] = sev_cycle[k % len(sev_cycle)]
                k += 1
        train.append(row)
        sag_t2, sag_t1, ax = str(2000 + 3 * s), str(2001 + 3 * s), str(2002 + 3 * s)
        series += [{"study_id": study, "series_id": sag_t2, "series_description": "Sagittal T2/STIR"},
                   {"study_id": study, "series_id": sag_t1, "series_description": "Sagittal T1"},
                   {"study_id": study, "series_id": ax, "series_description": "Axial T2"}]
        for inst in (3, 4):
            for ser in (sag_t2, sag_t1):
                write_dicom(images / study / ser / f"{inst}.dcm", rng.integers(0, 4000, (24, 20)), instance=inst,
                            position=tuple(rng.uniform(-60, 60, 3)))
        write_dicom(images / study / ax / "7.dcm", rng.integers(0, 4000, (24, 20)), instance=7)
        for lv_i, lv in enumerate(("L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1")):
            y = 2.0 + 4 * lv_i + rng.random()
            coords.append({"study_id": study, "series_id": sag_t2, "instance_number": "3",
                           "condition": "Spinal Canal Stenosis", "level": lv, "x": f"{5 + rng.random():.6f}",
                           "y": f"{y:.6f}"})
            coords.append({"study_id": study, "series_id": sag_t1, "instance_number": "4",
                           "condition": "Left Neural Foraminal Narrowing", "level": lv, "x": "10.5", "y": f"{y:.4f}"})
            coords.append({"study_id": study, "series_id": sag_t1, "instance_number": "3",
                           "condition": "Right Neural Foraminal Narrowing", "level": lv, "x": "9", "y": f"{y:.4f}"})
            coords.append({"study_id": study, "series_id": ax, "instance_number": "7",
                           "condition": "Left Subarticular Stenosis", "level": lv, "x": "8", "y": "8"})
    cols = ["study_id"] + [f"{c}_{lv}" for c in RSNA_CONDITIONS for lv in RSNA_LEVELS]
    labels = write_csv(root / "train.csv", train, cols, crlf=crlf)
    write_csv(root / "train_label_coordinates.csv", coords,
              ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"], crlf=crlf)
    write_csv(root / "train_series_descriptions.csv", series, ["study_id", "series_id", "series_description"],
              crlf=crlf)
    return {"images": images, "labels": labels, "train": train, "coords": coords}
