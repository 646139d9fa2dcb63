"""`medsoft-aug demo`: the whole chain on the embedded sample data (thin shim over :func:`medsoft_aug.api.demo`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .output import guarded, print_json, progress_reporter


@guarded
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder (work/, model/, balanced/, contact_sheet.png, "
                                      "demo.json); rerunning reuses finished stages.")] = Path("demo_out"),
    train_steps: Annotated[int, typer.Option(
        "--train-steps", help="Training steps per stage (MSC, then SMIS) of the tiny model.")] = 300,
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps when generating (paper: 50).")] = 50,
    guidance: Annotated[float, typer.Option(
        "--guidance", help="Classifier-free guidance scale (paper: 7.5; the demo's tiny base model needs more to "
        "make its lesions clearly visible).")] = 15.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of training and generation.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu (default: the tiny models are made for it), "
                                        "auto, cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(
        "--threads", help="torch CPU threads (0 = torch's choice). The tiny models gain little from more than 1, "
        "and several threads are far slower when other jobs share the CPU.")] = 1,
    blend: Annotated[str, typer.Option(
        "--blend", help="Eq. 7 latent kept outside the mask: donor = VAE(x0) (demo default) or masked = VAE(I_m) "
        "(the paper's text and the `balance` default; on the tiny model it darkens every lesion).")] = "donor",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")] = False,
) -> None:
    """Ingest -> masks -> train (tiny) -> balance to ratio 1.0 on sample_data/, with a donor | mask | synthetic
    contact sheet and the manifest. A few minutes on a laptop CPU."""
    from ..api import demo

    with progress_reporter() as on_progress:
        res = demo(out, train_steps=train_steps, steps=steps, guidance=guidance, seed=seed, device=device,
                   threads=threads or None, blend=blend, on_progress=on_progress)
    if json_out:
        print_json(res)
        return
    before, after = res["counts_before"], res["counts_after"]
    typer.echo("classes (train split): " + ", ".join(f"{c} {before.get(c, 0)} -> {n}" for c, n in after.items()))
    for c, r in res["intensity_inside_mask"].items():
        typer.echo(f"{c}: mean inside mask donor {r['donor_mean']:.3f} -> synthetic {r['synthetic_mean']:.3f} "
                   f"(real {c} lesions {r['real_lesion_mean']:.3f}); {r['k']} of {r['checked']} moved toward "
                   f"their class")
    typer.echo(f"manifest: {res['manifest']}\ncontact sheet: {res['contact_sheet']}\n"
               f"done in {res['total_s']:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
