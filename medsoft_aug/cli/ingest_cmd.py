"""`medsoft-aug ingest`: a thin shim over :func:`medsoft_aug.api.ingest`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import PartialFailure
from .options import JsonOpt, Layout
from .output import guarded, out_console, print_json, progress_reporter


def _summary(result) -> None:
    """The human-readable result, on stdout like every command's (logs and progress go to stderr)."""
    console = out_console()
    table = Table(title=f"ingest: {result.n_samples} samples in {result.work}", title_justify="left")
    table.add_column("class")
    for s in ("train", "val", "test", "total"):
        table.add_column(s, justify="right")
    for label, c in result.counts.items():
        name = f"{label} (normal class)" if label == result.normal_class else label
        table.add_row(name, *(str(c.get(s, 0)) for s in ("train", "val", "test")), str(sum(c.values())))
    sc = result.split_counts
    table.add_row("all", *(str(sc[s]) for s in ("train", "val", "test")), str(result.n_samples))
    console.print(table)
    skipped = {k: v for k, v in result.skipped.items() if v}
    if skipped:
        console.print("skipped rows: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    if result.failures:
        console.print(f"failed samples: {len(result.failures)} (listed below and in {result.paths['record']})")
    console.print(f"index: {result.paths['index']}")


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    @guarded
    def ingest_cmd(
        labels: Annotated[Path, typer.Option("--labels", help="Labels CSV (generic) or RSNA 2024 train.csv.")],
        images: Annotated[Path, typer.Option("--images", help="Image root; CSV image paths are relative to it.")],
        out: Annotated[Path, typer.Option("--out", "-o", help="WORK folder to write index.csv, slices/, seg/ "
                                          "into.")],
        fmt: Annotated[Layout, typer.Option("--format", help="Dataset layout.")] = Layout.generic,
        normal_class: Annotated[str, typer.Option("--normal-class", help="Name of the normal (majority) class; "
                                                  "RSNA 'Normal/Mild' maps to it.")] = "normal",
        coords: Annotated[Optional[Path], typer.Option(
            "--coords", help="rsna2024: train_label_coordinates.csv (default: beside --labels).")] = None,
        series_descriptions: Annotated[Optional[Path], typer.Option(
            "--series-descriptions",
            help="rsna2024: train_series_descriptions.csv (default: beside --labels).")] = None,
        conditions: Annotated[Optional[list[str]], typer.Option(
            "--conditions", help="rsna2024: conditions to ingest (repeat or comma-separate), e.g. "
            "spinal_canal_stenosis. Default: left/right neural foraminal narrowing and spinal canal stenosis.")] = None,
        test_fraction: Annotated[float, typer.Option("--test-fraction", help="Fraction of patients (per class "
                                                     "stratum) in the test split when the CSV has no split.")] = 0.2,
        val_fraction: Annotated[float, typer.Option("--val-fraction", help="Fraction of patients in the val split.")
                                ] = 0.0,
        split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the deterministic patient split.")] = 0,
        window: Annotated[tuple[float, float], typer.Option(
            "--window", help="Intensity window: low and high percentiles of each slice mapped to [0, 1].")
                          ] = (0.5, 99.5),
        force: Annotated[bool, typer.Option("--force", help="Replace an ingest of different inputs in --out.")
                         ] = False,
        json_out: JsonOpt = False,
    ):
        """Ingest studies + labels into WORK: normalized 2D slices, index.csv, patient-level splits."""
        from ..api import ingest

        partial: Optional[PartialFailure] = None
        with progress_reporter() as on_progress:
            try:
                result = ingest(labels, images, out, fmt=fmt.value, normal_class=normal_class, coords=coords,
                                series_descriptions=series_descriptions, conditions=conditions,
                                test_fraction=test_fraction, val_fraction=val_fraction, split_seed=split_seed,
                                window=window, force=force, on_progress=on_progress)
            except PartialFailure as e:  # outputs were written: show them, then exit 4 through `guarded`
                partial, result = e, e.result
        if json_out:
            if partial is None:       # on exit 4 `guarded` prints the one JSON document (result + error)
                print_json(result.to_dict())
        elif result is not None:
            _summary(result)
        if partial is not None:
            raise partial
