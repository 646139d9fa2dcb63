"""The one array-plus-properties contract every reader returns (cf. nnU-Net's BaseReaderWriter).

Conventions
-----------
* 2D images (PNG/TIFF, single-frame DICOM instances): ``array`` has shape (rows, cols) exactly as stored
  (row 0 = top), ``spacing`` = (row_spacing_mm, col_spacing_mm). Pixel coordinates x, y in label CSVs are
  (column, row) in this grid.
* 3D volumes (NIfTI, DICOM series, multi-frame DICOM): ``array`` is reoriented to the closest canonical
  RAS+ orientation (nibabel's ``as_closest_canonical``): shape (X, Y, Z), axis 0 increasing toward the
  patient's Right, axis 1 toward Anterior, axis 2 toward Superior. ``spacing`` = voxel sizes (mm) in that axis order; ``affine`` maps voxel (i, j, k) -> RAS mm.
* Intensities: float32 in stored physical units (DICOM rescale slope/intercept applied, MONOCHROME1 inverted so
  that higher always means brighter). Label maps keep their values (float ok; VerSe stores float64 labels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np


@dataclass
class ImageData:
    array: np.ndarray                      # float32; (rows, cols) for 2D, (X, Y, Z) RAS canonical for 3D
    spacing: tuple[float, ...]             # mm per axis, same order as array axes
    affine: Optional[np.ndarray] = None    # 4x4 voxel -> RAS mm for 3D (and 2D DICOM when geometry known)
    source_format: str = ""                # "dicom" | "dicom-series" | "nifti" | "raster"
    meta: dict[str, Any] = field(default_factory=dict)
    # meta keys used downstream (all optional): "photometric", "rescale_slope", "rescale_intercept",
    # "transfer_syntax", "bits_stored", "n_frames", "orig_ornt" (original orientation codes),
    # "dicom_files" (list of source file paths in slice order, for writing derived DICOM later).

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

