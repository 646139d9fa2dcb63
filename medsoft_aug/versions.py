"""The one collector of package versions, recorded by every stage record, MODEL_DIR and ``medsoft-aug info``.

Versions are read from the installed distributions' metadata (``importlib.metadata``), so nothing heavy is
imported: ``ingest`` and ``masks build`` stay torch-free.
"""
from __future__ import annotations

from importlib import metadata
from typing import Optional

from . import __version__

# Distributions whose versions can change a result: the models stack, the array stack and the readers/writers.
DISTRIBUTIONS = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch", "accelerate",
                 "safetensors", "tokenizers", "numpy", "scipy", "pandas", "pydicom", "highdicom", "SimpleITK",
                 "nibabel", "pillow")


def package_versions() -> dict[str, Optional[str]]:
    """``{"medsoft_aug": version, dist: version or None (not installed), ...}`` for :data:`DISTRIBUTIONS`."""
    out: dict[str, Optional[str]] = {"medsoft_aug": __version__}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
