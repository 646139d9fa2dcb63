"""Ingest: dataset layouts (generic CSV, RSNA 2024) -> WORK/index.csv + normalized 2D float32 slices.

Modules: ``slicing`` (volume -> 2D slice with recorded, invertible geometry), ``normalize`` (percentile window),
``splits`` (patient-level deterministic splits), ``samples`` (the per-row sample spec and safe paths),
``generic`` and ``rsna2024`` (labels-CSV layouts), ``stage`` (the ``ingest`` function).
"""
