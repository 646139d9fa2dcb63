"""The README.md written into the generated sample data folder (deterministic: no dates, no versions)."""
from __future__ import annotations


def readme_text(n_studies: int, seed: int, counts: dict[str, int], formats: dict[str, int],
                rsna: dict[str, int]) -> str:
    """Markdown describing the generated folder."""
    return _contents(n_studies, seed, counts, formats, rsna) + _conventions(n_studies)


def _contents(n_studies: int, seed: int, counts: dict[str, int], formats: dict[str, int],
              rsna: dict[str, int]) -> str:
    """The title, how to regenerate, and what the folder holds."""
    total = sum(counts.values())
    pct = {k: f"{100 * v / total:.0f}%" for k, v in counts.items()}
    return f"""# medsoft-aug sample data (synthetic phantom)

Entirely synthetic sagittal lumbar-spine "MRI" (T2-like) studies made by `medsoft_aug.sample_data`; no patient
data. They feed the tests, the demo and the efficacy benchmark. Regenerate byte-for-byte (from the repository
root):

```bash
python -m medsoft_aug.sample_data sample_data --n-studies {n_studies} --seed {seed}
sha256sum -c SHA256SUMS   # inside sample_data/
```

## Contents

| class | studies | share | what it looks like |
|---|---|---|---|
| normal | {counts['normal']} | {pct['normal']} | normal vertebrae L1-S1, discs, canal |
| benign | {counts['benign']} | {pct['benign']} | hemangioma-like: well-defined round T2 **hyper**intense lesion in one vertebral body (25-50% of its AP depth), on the middle slices |
| malignant | {counts['malignant']} | {pct['malignant']} | metastasis-like: irregular ill-defined T2 **hypo**intense lesion in one vertebral body, sometimes with 20-32% loss of its height |

- `labels.csv`: the generic layout of `medsoft-aug ingest` (columns `sample_id,patient_id,image,label,seg,level,x,y,description,slice`).
  `image` and `seg` are relative to this folder: run `medsoft-aug ingest --labels sample_data/labels.csv --images sample_data --out WORK`.
- `images/phantom_NNN/IM*.dcm`: {formats['dicom']} studies as DICOM series (MR, one file per sagittal slice, 5 or 7
  slices, 16-bit; a quarter uncompressed, the rest RLE Lossless to stay small).
  `images/phantom_NNN.nii.gz`: {formats['nifti']} studies as NIfTI (int16).
- `segs/phantom_NNN_seg.nii.gz`: vertebra label map of every study in the same grid (same affine) as its image,
  VerSe numbering: T12 = 19, L1 = 20, L2 = 21, L3 = 22, L4 = 23, L5 = 24, sacrum (S1) = 26. Each label covers the
  vertebral body and its posterior elements (pedicles, laminae, spinous process).
- `rsna2024/`: a tiny RSNA-2024-Lumbar-shaped set ({rsna['studies']} studies, {rsna['instances']} 2D instances,
  {rsna['coordinates']} coordinates): `train.csv`, `train_label_coordinates.csv`, `train_series_descriptions.csv` with
  the Kaggle column names, images at `rsna2024/images/{{study_id}}/{{series_id}}/{{instance}}.dcm`. Coordinates are given for
  the paper's sagittal conditions only (spinal canal stenosis on the middle instance of "Sagittal T2/STIR";
  left/right neural foraminal narrowing on the outermost left/right instance of "Sagittal T1"); the
  subarticular columns of `train.csv` are empty (no axial series). Narrowing is drawn at Moderate/Severe levels.
  Run `medsoft-aug ingest --format rsna2024 --labels sample_data/rsna2024/train.csv --images sample_data/rsna2024/images --out WORK`.
- `SHA256SUMS`: sha256 of every other file (what the determinism test compares).

"""


def _conventions(n_studies: int) -> str:
    """The grid, label and geometry conventions and the real-world traps built in."""
    return f"""## Conventions

- **Display grid.** Ingest takes sagittal slice `i` of the canonical RAS volume (`array[i, :, :]`, axes Y = anterior,
  Z = superior) and shows it as `display = vol[i].T[::-1, ::-1]`: row 0 = most superior, column 0 = most anterior
  (spine upright, patient facing left). `x` (column) and `y` (row) in `labels.csv` are pixel coordinates in that
  grid of the **middle sagittal slice** (`slice` is left empty, which means the middle slice; every study has
  an odd number of slices, so the middle is the same counted from either side).
- `level` and `x`,`y`: for benign and malignant studies, the vertebra with the lesion and the lesion centre; for
  normal studies a level cycling L1..L5 and the centre of that vertebral body (the donor region for inpainting).
- `description`: radiology-style lesion text for diseased studies, empty for normal ones.
- `patient_id`: `PH0001`...; the last {n_studies // 12} studies are second studies of patients `PH0001`... (patient-level
  splits must keep them together). DICOM PatientName is `PHANTOM^NNNN`, PatientID `PHNNNN` (obviously fake).
- Geometry: in-plane spacing 1.85-2.05 mm (128 x 128), 4.5-5.5 mm between sagittal slices. NIfTI studies are
  stored in RAS, LPS, PIR or ASL orientation (readers must canonicalize); DICOM segs are stored PIR.
  DICOM slices use ImageOrientationPatient `0\\1\\0\\0\\0\\-1` (rows go anterior to posterior, columns superior to
  inferior), proper ImagePositionPatient / PixelSpacing / SliceThickness / SpacingBetweenSlices.
- Real-world traps, on purpose: one DICOM series is MONOCHROME1 (stored inverted), two carry RescaleSlope 2 /
  RescaleIntercept -100, one has an empty-string SeriesInstanceUID, half list their instances right-to-left,
  one seg is stored as float64 (as VerSe does).
- Intensities: arbitrary T2-like units (CSF ~280-390, healthy disc nucleus ~220-310, marrow ~100-150, air 0)
  with Rician noise (sigma 3.6-5.6). Benign lesions are 2.0-2.4x the marrow, malignant ones 0.3-0.45x: the
  difference from the rest of the body is 13-43 noise sigmas on the middle slice.
- Determinism: seeded numpy Generators, gzip with mtime 0, DICOM UIDs from `pydicom.uid.generate_uid(entropy_srcs=...)`,
  fixed dates. A different zlib build (e.g. zlib-ng) could compress differently; the data would still be identical.
"""
