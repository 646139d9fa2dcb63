"""`medsoft-aug demo`: the whole chain on the embedded sample data (thin shim over :func:`medsoft_aug.api.demo`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Blend, JsonOpt, Negatives, Scorer, value
from .output import STATE, guarded, print_json, progress_reporter

DEMO_THREADS = 1
DEMO_GUIDANCE = 5.0           # = demo.DEMO_GUIDANCE (not imported: demo imports pandas; tests/test_demo.py)
DEMO_CANDIDATES = 1           # = demo.DEMO_CANDIDATES


@guarded
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (work/, model/, balanced/, "
                                      "contact_sheet.png, demo.json); rerunning reuses finished stages.")
                   ] = Path("demo_out"),
    max_steps: Annotated[int, typer.Option(
        "--max-steps", help="Training steps per stage (MSC, then SMIS) of the tiny model, as `train "
        "--max-steps`.")] = 300,
    train_steps: Annotated[Optional[int], typer.Option(
        "--train-steps", hidden=True, help="Deprecated name of --max-steps.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps when generating (paper: 50).")] = 50,
    guidance: Annotated[float, typer.Option(
        "--guidance", help="Classifier-free guidance scale (paper: 7.5; demo: 5, as it steers away from the other "
        "class's description).")] = DEMO_GUIDANCE,
    seed: Annotated[int, typer.Option("--seed", help="Seed of training and generation.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu (default: the tiny models are made for it), "
                                        "auto, cuda.")] = "cpu",
    blend: Annotated[Blend, typer.Option(
        "--blend", help="Eq. 7 latent kept outside the mask: donor = VAE(x0) (demo default) or masked = VAE(I_m) "
        "(the paper's text and the `balance` default; on the tiny model it darkens every lesion).")] = Blend.donor,
    negative_prompts: Annotated[Negatives, typer.Option(
        "--negative-prompts", help="What classifier-free guidance steers away from: other-classes (demo "
        "default: the other disease class's description) or none (the empty text, the paper's and `balance`'s "
        "default).")] = Negatives.other_classes,
    candidates: Annotated[int, typer.Option(
        "--candidates", help="balance's post-selection: K candidates per planned sample, the best kept (1, the "
        "demo's default: no selection; each sample is still scored).")] = DEMO_CANDIDATES,
    scorer: Annotated[Scorer, typer.Option(
        "--scorer", help="Scorer of the samples (their class_score) and candidates: classifier (demo default: "
        "logistic regression on the real training split) or feature (the tiny encoder's features).")] = Scorer.classifier,
    json_out: JsonOpt = False,
) -> None:
    """Ingest -> masks -> train (tiny-128) -> balance to ratio 1.0 on sample_data/, with a donor | mask | synthetic
    contact sheet and the manifest. About 1.5 minutes on a 2-core CPU; runs torch on 1 thread unless the global
    --threads says otherwise."""
    from ..api import demo

    threads = DEMO_THREADS if STATE["threads"] is None else STATE["threads"] or None     # 0: torch's choice
    with progress_reporter() as on_progress:
        res = demo(out, train_steps=train_steps or max_steps, steps=steps, guidance=guidance, seed=seed,
                   device=device, threads=threads, blend=value(blend), negative_prompts=value(negative_prompts),
                   candidates=candidates,
                   scorer=value(scorer), on_progress=on_progress)
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
