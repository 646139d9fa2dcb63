"""`medsoft-aug evaluate quality | classify | report`: thin shims over the evaluate API functions."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .output import guarded, print_json, progress_reporter

evaluate_app = typer.Typer(
    help="Evaluate synthetic data: image quality (FID, PSNR, SSIM) and downstream classification "
    "(AUC, accuracy, precision, recall, F1) against baseline, oversampling and classical augmentation.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Also write a report (metrics.json, "
                                                   "summary.md, PNG charts and contact sheets) to this folder.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu, cuda or cuda:N.")]


def _table(metrics: dict) -> str:
    names = ("auc", "accuracy", "precision", "recall", "f1")
    lines = ["method      " + "".join(f"{n:>18}" for n in names)]
    for method, row in metrics.items():
        cells = []
        for n in names:
            v = row.get(n, {})
            cells.append(f"{'n/a':>18}" if v.get("mean") is None else f"{v['mean']:>10.3f} ± {v['std']:.3f}")
        lines.append(f"{method:<12}" + "".join(cells))
    return "\n".join(lines)


@evaluate_app.command("classify")
@guarded
def classify(
    manifest: Annotated[Path, typer.Option("--manifest", "-m", help="manifest.csv from `medsoft-aug balance`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for metrics.json, classify.json and "
                                      "predictions.csv.")],
    seeds: Annotated[int, typer.Option("--seeds", help="Number of training seeds (results are mean and std).")] = 3,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per run.")] = 10,
    resolution: Annotated[int, typer.Option("--resolution", help="Images are padded to square and resized to "
                                            "this many pixels.")] = 128,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Local ResNet-18 weights (.safetensors, "
                                                    "or a torchvision .pth read with weights_only).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Training batch size.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="First seed; runs use seed, seed+1, ...")] = 0,
    method: Annotated[Optional[list[str]], typer.Option("--method", help="Restrict to these methods "
                      "(repeatable): baseline, oversample, classical, medsoft.")] = None,
    device: DeviceOpt = "auto",
    report: ReportOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when OUT holds results for the same "
                                        "manifest and options.")] = False,
    json_out: JsonOpt = False,
):
    """Train a ResNet-18 on real vs real+synthetic data (and oversampling / classical augmentation); test on the
    real test split only."""
    from ..api import evaluate_classify
    from ..evaluate.classify import METHODS

    with progress_reporter() as on_progress:
        res = evaluate_classify(manifest, out, seeds=seeds, epochs=epochs, resolution=resolution, weights=weights,
                                batch_size=batch_size, lr=lr, seed=seed, device=device,
                                methods=tuple(method) if method else METHODS, report_dir=report, force=force,
                                on_progress=on_progress)
    if json_out:
        print_json({"out": str(res.out), "cached": res.cached, "metrics": res.metrics,
                    "class_names": res.info.get("class_names"), "n_test": res.info.get("n_test"),
                    "report": str(report) if report else None})
        return
    typer.echo(_table(res.metrics))
    typer.echo(f"\nwritten to {res.out}" + (" (up to date, not recomputed)" if res.cached else ""))


@evaluate_app.command("quality")
@guarded
def quality(
    work: Annotated[Path, typer.Option("--work", "-w", help="WORK folder from ingest and `masks build`.")],
    model: Annotated[Path, typer.Option("--model", help="MODEL_DIR from `medsoft-aug train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for quality.json and per-sample rows.")],
    inception_weights: Annotated[Optional[Path], typer.Option(
        "--inception-weights", help="Local torchvision Inception-v3 weights (.safetensors or .pth) for FID; "
        "without it FID uses the model's BiomedCLIP image features, and says so.")] = None,
    balance_out: Annotated[Optional[Path], typer.Option(
        "--balance-out", help="A `balance` output folder: also measure background fidelity (PSNR outside the "
        "mask of each synthetic image against its donor).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="DDIM steps (default 50, as in the paper).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale (default 7.5, as in the paper).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inpainting batch size.")] = 8,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use at most this many test samples.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Run seed for the inpainting noise.")] = 0,
    device: DeviceOpt = "auto",
    report: ReportOpt = None,
    json_out: JsonOpt = False,
):
    """Inpaint held-out diseased test samples with their own description and compare with the originals."""
    from ..api import evaluate_quality

    with progress_reporter() as on_progress:
        res = evaluate_quality(work, model, out, inception_weights=inception_weights, balance_out=balance_out,
                               steps=steps, guidance=guidance, batch_size=batch_size, limit=limit, seed=seed,
                               device=device, report_dir=report, on_progress=on_progress)
    if json_out:
        print_json(res.summary)
        return
    for k, v in res.summary.items():
        if not isinstance(v, (dict, list)):
            typer.echo(f"{k}: {v}")
        elif isinstance(v, dict):
            typer.echo(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items() if not isinstance(b, (dict, list))))


@evaluate_app.command("report")
@guarded
def report_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    classify_out: Annotated[Optional[Path], typer.Option("--classify", help="OUT folder of `evaluate classify`.")] = None,
    quality_out: Annotated[Optional[Path], typer.Option("--quality", help="OUT folder of `evaluate quality`.")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", "-m", help="manifest.csv, for contact sheets "
                                                     "(donor | mask | synthetic per class).")] = None,
    json_out: JsonOpt = False,
):
    """Write a report (summary.md, ROC curves, confusion matrices, F1 bars, contact sheets) from finished runs."""
    from ..errors import UsageError
    from ..evaluate.report import write_report

    if classify_out is None and quality_out is None and manifest is None:
        raise UsageError("give at least one of --classify, --quality, --manifest")
    files = write_report(out, classify_out=classify_out, quality_out=quality_out, manifest=manifest)
    if json_out:
        print_json({"report": str(out), "files": [str(f) for f in files]})
        return
    for f in files:
        typer.echo(str(f))


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
