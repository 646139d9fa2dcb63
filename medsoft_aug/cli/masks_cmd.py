"""`medsoft-aug masks build`: a thin shim over :func:`medsoft_aug.api.build_masks`."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import NUMBERINGS, JsonOpt, MaskSource, parse_numbering, value
from .output import guarded, print_json, progress_reporter

# Mirrors of medsoft_aug.masks.stage defaults (that module is imported lazily, inside the command).
_SIGMA_MM = 3.0
_BOX_MM = 40.0

masks_app = typer.Typer(help="Soft masks (Eq. 1): where lesions will be inpainted.", no_args_is_help=True)


@masks_app.command("build")
@guarded
def build(
    work: Annotated[Path, typer.Argument(help="WORK folder written by `medsoft-aug ingest` (reads index.csv).")],
    source: Annotated[MaskSource, typer.Option(
        "--source", help="Where masks come from: seg (label map + level), coords (box around x,y), or auto "
        "(seg when a row has a seg and a level, else coords when it has x,y).")] = MaskSource.auto,
    sigma_mm: Annotated[float, typer.Option(
        "--sigma-mm", help="Gaussian blur sigma in mm (Eq. 1), converted per axis with the pixel spacing. "
        "Default 3 mm: softens the edge over about +-6 mm, a fifth of a lumbar vertebral body, keeping "
        "its core at 1. 0 = no blur (a 0/1 mask). The paper's w/o-SMIS ablation is `train --mask-mode hard`, "
        "not this option.")] = _SIGMA_MM,
    box_mm: Annotated[float, typer.Option(
        "--box-mm", help="Side of the square box (mm) centred on x,y for coordinate masks. Default 40 mm: "
        "a lumbar vertebral body is about 30-40 mm wide, so the box covers it (or a disc and both "
        "adjacent endplates).")] = _BOX_MM,
    dilate_mm: Annotated[float, typer.Option(
        "--dilate-mm", help="Dilate the hard mask by this many mm before blurring (0 = none).")] = 0.0,
    numbering: Annotated[str, typer.Option(
        "--numbering", parser=parse_numbering, metavar="|".join(NUMBERINGS),
        help="Label numbering of the segs: verse (VerSe/TPTBox), totalseg (TotalSegmentator's `total` task; "
        "`total` is accepted too), totalseg-mr (its `total_mr` task, also accepted: one vertebrae class, the "
        "component nearest x,y is used), or auto (decided per slice from its label values; recorded in "
        "masks.json).")] = "auto",
    preview: Annotated[Optional[Path], typer.Option(
        "--preview", help="Write a contact sheet PNG (up to 24 samples spread over classes: image, and "
        "image with the soft mask overlaid and outlined).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Recompute every mask (default: reuse masks whose inputs and options are "
        "unchanged).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Build one soft mask per sample: WORK/masks/{id}.npy, WORK/masks.csv, WORK/masks.json."""
    from ..api import build_masks

    with progress_reporter() as on_progress:
        res = build_masks(work, source=value(source), sigma_mm=sigma_mm, box_mm=box_mm, dilate_mm=dilate_mm,
                          numbering=numbering, preview=preview, force=force, on_progress=on_progress)
    if json_out:
        print_json(res.to_dict())
        return
    typer.echo(f"masks: {res.ok} ok ({res.computed} computed, {res.reused} reused), {res.failed} failed "
               f"-> {res.masks_csv}")
    if res.preview:
        typer.echo(f"preview: {res.preview}")


def register(app: typer.Typer) -> None:
    app.add_typer(masks_app, name="masks")
