"""Deterministic phantom sample data: synthetic sagittal lumbar-spine MRI studies with VerSe label maps.

``python -m medsoft_aug.sample_data OUT [--n-studies N] [--seed S]`` regenerates the repository's
``sample_data/`` byte-for-byte (``python -m medsoft_aug.sample_data sample_data``).
"""
from __future__ import annotations

from .build import LABEL_COLUMNS, class_counts, make_sample_data, plan_studies, render_study
from .phantom import VERSE_LABELS, display_to_volume, volume_to_display

__all__ = ["LABEL_COLUMNS", "VERSE_LABELS", "class_counts", "display_to_volume", "make_sample_data",
           "plan_studies", "render_study", "volume_to_display"]
