"""`medsoft-aug evaluate quality | classify | report`: thin shims over the evaluate API functions."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import DeviceOpt, JsonOpt, WorkArg
from .output import guarded, print_json, progress_reporter, torch_threads

evaluate_app = typer.Typer(
    help="Evaluate synthetic data: image quality (FID, PSNR, SSIM) and downstream classification "
    "(AUC, accuracy, precision, recall, F1) against baseline, oversampling and classical augmentation.",
    no_args_is_help=True,
)

ReportOpt = Annotated[Optional[Path], typer.Option("--report", help="Also write a report (metrics.json, "
                                                   "summary.md, PNG charts and contact sheets) to this folder.")]


def _table(metrics: dict, class_names: list[str]) -> str:
    names = ("auc", "accuracy", "precision", "recall", "f1", "minority_f1")
    cell = lambda v: f"{'n/a':>16}" if not v or v.get("mean") is None else f"{v['mean']:>8.3f} ± {v['std']:.3f}"  # noqa: E731
    width = max([12, *(len(m) + 2 for m in metrics)])
    lines = ["method".ljust(width) + "".join(f"{n:>16}" for n in names)]
    for method, row in metrics.items():
        lines.append(method.ljust(width) + "".join(cell(row.get(n)) for n in names))
    lines += ["", "per class (F1)".ljust(width) + "".join(f"{c[:15]:>16}" for c in class_names)]
    for method, row in metrics.items():
        lines.append(method.ljust(width) + "".join(cell(row["per_class"][c]["f1"]) for c in class_names))
    return "\n".join(lines)


def _verdicts(comparisons: list[dict]) -> str:
    lines = []
    for c in comparisons:
        if c["metric"] != "minority_f1" or c["mean_diff"] is None:
            continue
        p = "n/a" if c["p"] is None else f"{c['p']:.3f}"
        lines.append(f"{c['a']} vs {c['b']}: minority F1 {c['mean_diff']:+.3f} (paired t-test over seeds, "
                     f"p {p}): {c['verdict']}")
    return "\n".join(lines)


@evaluate_app.command("classify")
@guarded
def classify(
    manifest: Annotated[list[str], typer.Option(
        "--manifest", "-m", help="manifest.csv from `medsoft-aug balance`, as NAME=PATH for a named method "
        "(repeatable: --manifest medsoft=A/manifest.csv --manifest no-msc=B/manifest.csv ...); a bare PATH is "
        "the `medsoft` method. All must hold the same real rows (same WORK).")],
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
                      "(repeatable): baseline, oversample, classical, or a manifest's NAME.")] = None,
    normal_class: Annotated[Optional[str], typer.Option("--normal-class", help="The normal class (default: "
                            "balance.json beside the first manifest, else `normal`); minority F1 averages the "
                            "others.")] = None,
    device: DeviceOpt = "auto",
    report: ReportOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute even when OUT holds results for the same "
                                        "manifests and options.")] = False,
    json_out: JsonOpt = False,
):
    """Train a ResNet-18 on real vs real+synthetic data (and oversampling / classical augmentation); test on the
    real test split only; compare every pair of methods with a paired t-test over seeds."""
    from ..api import evaluate_classify
    from ..evaluate.classify import parse_manifest_arg
    from ..errors import UsageError

    named = dict(parse_manifest_arg(m) for m in manifest)
    if len(named) != len(manifest):
        raise UsageError("each --manifest needs its own NAME (NAME=PATH); a bare PATH is `medsoft`")
    with progress_reporter() as on_progress, torch_threads():
        res = evaluate_classify(named, out, seeds=seeds, epochs=epochs, resolution=resolution, weights=weights,
                                batch_size=batch_size, lr=lr, seed=seed, device=device,
                                methods=tuple(method) if method else None, normal_class=normal_class,
                                report_dir=report, force=force, on_progress=on_progress)
    if json_out:
        print_json({"out": str(res.out), "cached": res.cached, "metrics": res.metrics,
                    "class_names": res.info.get("class_names"), "normal_class": res.info.get("normal_class"),
                    "n_test": res.info.get("n_test"), "comparisons": res.info.get("comparisons"),
                    "report": str(report) if report else None})
        return
    typer.echo(_table(res.metrics, res.info["class_names"]))
    typer.echo("\n" + _verdicts(res.info.get("comparisons", [])))
    typer.echo(f"\nwritten to {res.out}" + (" (up to date, not recomputed)" if res.cached else ""))


@evaluate_app.command("quality")
@guarded
def quality(
    work: WorkArg,
    model: Annotated[Path, typer.Option("--model", help="MODEL_DIR from `medsoft-aug train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for quality.json and per-sample rows.")],
    inception_weights: Annotated[Optional[Path], typer.Option(
        "--inception-weights", help="Local torchvision Inception-v3 weights (.safetensors or .pth) for FID; "
        "without it FID uses the model's BiomedCLIP image features, and says so.")] = None,
    balance_out: Annotated[Optional[Path], typer.Option(
        "--balance-out", help="A `balance` output folder: also measure background fidelity (PSNR outside the "
        "mask of each synthetic image against its donor).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="DDIM steps (default 50, as in the paper).")] = None,
    guidance: Annotated[Optional[float], typer.Option(
        "--guidance", help="Classifier-free guidance scale (default 7.5, as in the paper).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inpainting batch size.")] = 8,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use at most this many test samples.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Run seed for the inpainting noise.")] = 0,
    device: DeviceOpt = "auto",
    report: ReportOpt = None,
    json_out: JsonOpt = False,
):
    """Inpaint held-out diseased test samples with their own description and compare with the originals."""
    from ..api import evaluate_quality
    with progress_reporter() as on_progress, torch_threads():
        res = evaluate_quality(work, model, out, inception_weights=inception_weights,
                               balance_out=balance_out, steps=steps, guidance=guidance, batch_size=batch_size,
                               limit=limit, seed=seed, device=device, report_dir=report, on_progress=on_progress)
    if json_out:
        print_json(res.summary)
        return
    typer.echo(quality_text(res.summary, res.out))


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, (int, float)):
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return str(v)          # "inf" (an identical image) and other words stay as they are


def _mean_std(d: dict, digits: int, unit: str = "") -> str:
    if d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}{unit}"


def quality_text(s: dict, out: Path) -> str:
    """Human-readable `evaluate quality` result: formatted numbers, one metric per line."""
    lines = [f"quality of {s.get('n_samples', 0)} held-out diseased test samples (DDIM steps {s.get('steps')}, "
             f"guidance {s.get('guidance')}, seed {s.get('seed')})"]
    for k, name, digits, unit in (("psnr", "PSNR (whole image)", 2, " dB"), ("psnr_mask", "PSNR (inside mask)", 2,
                                  " dB"), ("ssim", "SSIM (whole image)", 3, ""), ("ssim_mask", "SSIM (inside mask)",
                                                                                  3, "")):
        if isinstance(s.get(k), dict):
            lines.append(f"  {name:<20} {_mean_std(s[k], digits, unit)}")
    if s.get("n_identical"):
        lines.append(f"  identical to the original: {s['n_identical']} (PSNR inf, left out of the means)")
    lines.append(f"  {'FID':<20} {_num(s.get('fid'), 2)} ({s.get('fid_features', 'n/a')} features)")
    bg = s.get("background") if isinstance(s.get("background"), dict) else {}
    if bg:
        lines.append("background fidelity of the balance output (outside the mask, against the donor): "
                     + ", ".join(f"{k} {_num(v)}" for k, v in bg.items() if k != "note" and
                                 not isinstance(v, (dict, list))))
    notes = [s.get("fid_note"), bg.get("note"), *s.get("notes", [])]
    for note in filter(None, notes):
        lines.append(f"note: {note}")
    lines.append(f"written to {out}")
    return "\n".join(lines)


@evaluate_app.command("report")
@guarded
def report_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder to write.")],
    classify_out: Annotated[Optional[Path], typer.Option("--classify", help="OUT folder of `evaluate classify`.")] = None,
    quality_out: Annotated[Optional[Path], typer.Option("--quality", help="OUT folder of `evaluate quality`.")] = None,
    manifest: Annotated[Optional[list[str]], typer.Option(
        "--manifest", "-m", help="manifest.csv (NAME=PATH, repeatable) for contact sheets (donor | mask | "
        "synthetic per method); default the manifests recorded by --classify.")] = None,
    json_out: JsonOpt = False,
):
    """Write a report (summary.md in the Table 1b layout, per-class F1 bars, ROC per class, confusion matrices,
    contact sheets) from finished runs."""
    from ..api import evaluate_report
    from ..evaluate.classify import parse_manifest_arg

    named = dict(parse_manifest_arg(m) for m in manifest) if manifest else None
    files = evaluate_report(out, classify_out=classify_out, quality_out=quality_out, manifests=named)
    if json_out:
        print_json({"report": str(out), "files": [str(f) for f in files]})
        return
    for f in files:
        typer.echo(str(f))


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
