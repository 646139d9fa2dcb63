"""Efficacy benchmark: the paper's Table 1b protocol on the phantom data, end to end.

    phantom sample data -> ingest -> masks build
        -> train (tiny) three times: medsoft (full), no-msc (--no-msc), no-smis (--mask-mode hard)
        -> balance each model with balance's defaults (ratio 1.0, 50 DDIM steps, guidance 7.5, masked blend)
        -> evaluate classify --manifest medsoft=... --manifest no-msc=... --manifest no-smis=...
           (+ the built-in baseline, oversample and classical methods; ResNet-18 over seeds, paired t-test)
        -> evaluate quality for each model (held-out diseased test samples inpainted with their own description)
    --variants medsoft sel-classifier sel-feature: the medsoft model balanced again with post-selection
    (`balance --candidates K --scorer classifier|feature --min-score F`; same model, seed and plan as medsoft), so
    the paired comparison medsoft vs medsoft + selection differs in selection only; seconds per kept sample
    (balance.json's generate_s / generated) are printed for every balance run.
    --variants negatives deepcache-3 ddim-20: the medsoft model balanced again with one sampling option changed
    (--negative-prompts other-classes; --deepcache-interval 3; 20 DDIM steps instead of 50), the same way.

Prints Table 1b (mean ± std over seeds, real test split only) with per-class rows and the paired verdicts, and
writes OUT/efficacy.json and a report (OUT/report/: summary.md, per-class F1 bars, ROC per class, confusion
matrices, one donor | mask | synthetic contact sheet per generated method). Stages reuse finished outputs on a
rerun with the same options. Whatever the numbers say is the finding: nothing here is tuned toward a result.

Usage (from the repository root):
    python bench/efficacy.py --quick --threads 1      # 32 studies, small budgets: a short run
    python bench/efficacy.py --threads 1              # the full protocol: 160 studies, 3 seeds
    python bench/efficacy.py --threads 1 --variants medsoft sel-classifier sel-feature   # with / without selection
On a shared, loaded CPU one torch thread is much faster than torch's default.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = (("auc", "AUC"), ("accuracy", "Acc"), ("precision", "Pre"), ("recall", "Rec"), ("f1", "F1"),
         ("minority_f1", "minority F1"))
VARIANTS = {"medsoft": {}, "no-msc": {"no_msc": True}, "no-smis": {"mask_mode": "hard"}}
SELECTION = {"sel-classifier": "classifier", "sel-feature": "feature"}   # variant -> scorer (medsoft's model)
SAMPLING = {"negatives": {"negative_prompts": "other-classes"}, "deepcache-3": {"deepcache_interval": 3},
            "ddim-20": {"steps": 20}}                                    # variant -> balance options (medsoft's model)
ON_MEDSOFT = (*SELECTION, *SAMPLING)                                      # variants that reuse medsoft's model
KEEP_BEST = {"classifier": 0.0, "feature": -2.0}   # the lowest score each scorer gives: the floor keeps the best
TINY_BASE_UNET = REPO / "medsoft_aug" / "models" / "tiny_base" / "unet" / "diffusion_pytorch_model.safetensors"
PRESETS = {
    "quick": dict(n_studies=32, train_steps=60, steps=20, seeds=2, epochs=8, resolution=64),
    "full": dict(n_studies=160, train_steps=300, steps=50, seeds=3, epochs=15, resolution=64),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budgets (see PRESETS['quick'])")
    p.add_argument("--out", type=Path, default=Path("bench_out/efficacy"), help="output folder (reused on rerun)")
    p.add_argument("--n-studies", type=int, help="phantom studies (32 = the repository's sample_data/)")
    p.add_argument("--train-steps", type=int, help="training steps per stage (MSC, SMIS) of the tiny model")
    p.add_argument("--steps", type=int, help="DDIM steps when balancing (balance's default: 50)")
    p.add_argument("--seeds", type=int, help="classifier seeds")
    p.add_argument("--epochs", type=int, help="classifier epochs")
    p.add_argument("--resolution", type=int, help="classifier input size (pixels)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="patient-level test share at ingest")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation, training and generation")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *ON_MEDSOFT],
                   help="generated methods to run (default: medsoft, no-msc, no-smis; sel-*: medsoft's model "
                        "with post-selection; negatives, deepcache-3, ddim-20: medsoft's model with that "
                        "sampling option, see SAMPLING)")
    p.add_argument("--candidates", type=int, default=3, help="K of the sel-* variants")
    p.add_argument("--min-score", type=float, help="floor of the sel-* variants (default: the scorer's lowest "
                                                   "score, i.e. keep the best candidate; see KEEP_BEST)")
    p.add_argument("--skip-quality", action="store_true", help="skip evaluate quality")
    a = p.parse_args(argv)
    preset = PRESETS["quick" if a.quick else "full"]
    for k, v in preset.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def sample_data(out: Path, n: int, seed: int) -> Path:
    repo = REPO / "sample_data"
    if n == 32 and seed == 0 and (repo / "labels.csv").is_file():
        return repo
    from medsoft_aug.api import make_sample_data

    dst = out / f"sample_data_{n}_{seed}"
    if not (dst / "labels.csv").is_file():
        make_sample_data(dst, n_studies=n, seed=seed)
    return dst


def _cell(v: dict | None) -> str:
    return "n/a" if not v or v.get("mean") is None else f"{v['mean']:.3f} ± {v['std']:.3f}"


def table(metrics: dict, class_names: list[str], minority: list[str]) -> str:
    """Table 1b: one row per method (macro metrics and minority F1), then per class one row per method
    (precision / recall / F1 of that class in the Pre / Rec / F1 columns)."""
    lines = ["| method | " + " | ".join(h for _, h in TABLE) + " |", "|---" * (len(TABLE) + 1) + "|"]
    for m, row in metrics.items():
        lines.append(f"| {m} | " + " | ".join(_cell(row[k]) for k, _ in TABLE) + " |")
    for c in class_names:
        tag = f"{c} (disease)" if c in minority else c
        for m, row in metrics.items():
            pc = row["per_class"][c]
            lines.append(f"| {m} · {tag} | | | {_cell(pc['precision'])} | {_cell(pc['recall'])} | "
                         f"{_cell(pc['f1'])} | |")
    return "\n".join(lines)


def verdicts(comparisons: list[dict]) -> list[str]:
    out = []
    for c in comparisons:
        if c["metric"] == "minority_f1" and c["mean_diff"] is not None:
            f1 = next(d for d in comparisons if (d["a"], d["b"], d["metric"]) == (c["a"], c["b"], "f1"))
            p = lambda d: "n/a" if d["p"] is None else f"{d['p']:.3f}"  # noqa: E731
            out.append(f"{c['a']} vs {c['b']}: minority F1 {c['mean_diff']:+.3f} (p {p(c)}) {c['verdict']}; "
                       f"macro F1 {f1['mean_diff']:+.3f} (p {p(f1)}) {f1['verdict']}")
    return out


def run_protocol(a: argparse.Namespace, lap) -> tuple[dict, dict, dict]:
    """Every stage of the protocol; returns (balance results, classify result, quality summaries) by variant."""
    from medsoft_aug import api

    out = a.out
    t = time.time()
    data = sample_data(out, a.n_studies, a.seed)
    tag = f"n{a.n_studies}_s{a.seed}_tf{a.test_fraction}"
    work = out / f"work_{tag}"
    api.ingest(data / "labels.csv", data, work, test_fraction=a.test_fraction, split_seed=a.seed)
    api.build_masks(work)
    lap("data, ingest, masks", t)
    balanced, models = {}, {}
    for name in a.variants:
        t = time.time()
        balanced[name], models[name] = balance_variant(a, work, tag, name)
        lap(f"train, balance {name}", t)
    t = time.time()
    cres = api.evaluate_classify({n: balanced[n]["out"] / "manifest.csv" for n in a.variants}, out / "classify",
                                 seeds=a.seeds, epochs=a.epochs, resolution=a.resolution, seed=a.seed,
                                 device=a.device, report_dir=out / "report")
    lap("classify", t)
    quality = {}
    for name in ([] if a.skip_quality else [v for v in a.variants if v not in ON_MEDSOFT]):   # one per model
        t, qout = time.time(), out / f"quality_{balanced[name]['out'].name}"
        if (qout / "quality.json").is_file():          # a finished run of the same variant and options
            q = json.loads((qout / "quality.json").read_text())
        else:
            q = api.evaluate_quality(work, models[name], qout, steps=a.steps, seed=a.seed, device=a.device,
                                     balance_out=balanced[name]["out"]).summary
        quality[name] = {k: q.get(k) for k in ("n_samples", "mask_mode", "psnr", "psnr_mask", "ssim", "ssim_mask",
                                               "fid", "fid_features", "background")}
        lap(f"quality {name}", t)
    return balanced, cres, quality


def balance_variant(a: argparse.Namespace, work: Path, tag: str, name: str) -> tuple[dict, Path]:
    """Train the variant's model (sel-* and SAMPLING: medsoft's; a finished model is reused) and balance WORK with
    it (balance's defaults; sel-*: with --candidates / --scorer / --min-score; SAMPLING: with its options).
    Returns (result, model dir)."""
    from medsoft_aug import api

    base = "medsoft" if name in ON_MEDSOFT else name
    model = a.out / f"model_{base}_{tag}_ts{a.train_steps}"
    api.train(work, model, max_steps=a.train_steps, seed=a.seed, device=a.device, **VARIANTS[base])
    bal = a.out / f"balanced_{name}_{tag}_ts{a.train_steps}_st{a.steps}"
    sel = {"steps": a.steps, **SAMPLING.get(name, {})}
    if name in SELECTION:
        floor = KEEP_BEST[SELECTION[name]] if a.min_score is None else a.min_score
        bal = bal.with_name(f"{bal.name}_k{a.candidates}_f{floor}")
        sel.update(candidates=a.candidates, scorer=SELECTION[name], min_score=floor)
    cpu = time.process_time()
    res = api.balance(work, model, bal, target_ratio=1.0, seed=a.seed, device=a.device, **sel)
    cpu, n = time.process_time() - cpu, res.get("generated") or 0       # 0: a finished run was reused
    res["out"], res["cost"] = bal, balance_cost(bal)
    res["cost"]["cpu_s_per_kept_sample"] = round(cpu / n, 3) if n else None   # this process, this run only
    return res, model


def balance_cost(bal: Path) -> dict:
    """What one balance run cost, from its balance.json (the run that generated, also when reused)."""
    rec = json.loads((bal / "balance.json").read_text())
    t, n = rec.get("timings", {}), rec.get("generated") or 0
    sel = rec.get("selection") or {}
    return {"candidates": sel.get("candidates", 1), "scorer": sel.get("scorer"), "floor": sel.get("floor"),
            "kept": n, "generate_s": t.get("generate_s"), "load_model_s": t.get("load_model_s"),
            "seconds_per_kept_sample": round(t["generate_s"] / n, 3) if n and t.get("generate_s") else None,
            "evidence": {c: e.get("text") for c, e in (rec.get("evidence") or {}).items()}}


def code_state() -> dict:
    """The code the figures were measured on: git commit (when REPO is a checkout) and the tiny base's weights."""
    import hashlib
    import subprocess

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        except OSError:
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    sha = hashlib.sha256(TINY_BASE_UNET.read_bytes()).hexdigest() if TINY_BASE_UNET.is_file() else None
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": None if status is None else bool(status),
            "tiny_base_unet_sha256": sha}


def lesion_evidence(balance_out: Path) -> dict:
    """Per class: how the synthetic lesions moved inside the mask they were made with, against the donor and
    toward the mean of the class's real training lesions (``generate.evidence``)."""
    import numpy as np
    import pandas as pd

    from medsoft_aug.evaluate.data import load_image
    from medsoft_aug.generate.evidence import masked_mean, sample_evidence, summarize

    man = pd.read_csv(balance_out / "manifest.csv", dtype=str, keep_default_na=False)
    by_id = man.set_index("sample_id")
    real = man[(man["origin"] == "real") & (man["split"] == "train") & (man["mask"] != "")]
    ref = {lab: float(np.nanmean([masked_mean(load_image(balance_out / r["image"]),
                                              np.load(balance_out / r["mask"])) for _, r in g.iterrows()]))
           for lab, g in real.groupby("label")}
    rows = []
    for _, r in man[man["origin"] == "synthetic"].iterrows():
        ev = sample_evidence(load_image(balance_out / by_id.at[r["donor_id"], "image"]),
                             load_image(balance_out / r["image"]), np.load(balance_out / r["mask"]),
                             reference_mean=ref.get(r["label"]))
        rows.append({"label": r["label"], **ev})
    out = summarize(rows)
    for lab, c in out.items():
        c["real_lesion_mean"] = ref.get(lab)
        c["synthetic_mean"] = float(np.mean([r["synthetic_mean"] for r in rows if r["label"] == lab]))
        c["donor_mean"] = float(np.mean([r["donor_mean"] for r in rows if r["label"] == lab]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the protocol top to bottom (over 60 lines: one script-style sequence of stages, each timed, read in
    order; splitting it would only scatter the timing bookkeeping)."""
    a = parse(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    code = code_state()              # before any stage: the tiny base the models are trained from
    times: dict[str, float] = {}
    t_all = time.time()

    def lap(name: str, t: float) -> None:
        times[name] = round(time.time() - t, 1)
        print(f"[efficacy] {name}: {times[name]} s", file=sys.stderr, flush=True)

    balanced, cres, quality = run_protocol(a, lap)
    info, first = cres.info, balanced[a.variants[0]]
    evidence = {n: lesion_evidence(b["out"]) for n, b in balanced.items()}
    summary = {
        "command": "python bench/efficacy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "preset": "quick" if a.quick else "full",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": a.device},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}, "code": code,
        "balance_cost": {n: b["cost"] for n, b in balanced.items()},
        "counts_before": first.get("counts_before"),
        "counts_after": {n: b.get("counts_after") for n, b in balanced.items()},
        "n_test": info["n_test"], "test_class_counts": info["test_class_counts"],
        "n_real_train": info["n_real_train"], "metrics": cres.metrics, "comparisons": info["comparisons"],
        "paired_test": info["paired_test"], "quality": quality, "lesion_evidence": evidence, "timings_s": times,
        "total_s": round(time.time() - t_all, 1),
    }
    (a.out / "efficacy.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"Phantom data: {a.n_studies} studies ({summary['preset']} preset); train split "
          f"{first.get('counts_before')} -> {first.get('counts_after')} after balancing; test split "
          f"{info['test_class_counts']}.")
    print(f"ResNet-18, {a.seeds} seeds x {a.epochs} epochs at {a.resolution} px; tiny diffusion model "
          f"({a.train_steps} training steps per stage), balance at {a.steps} DDIM steps, guidance 7.5, masked "
          f"blend.\n")
    print(table(cres.metrics, info["class_names"], info["minority_classes"]))
    print(f"\nPaired comparisons ({info['paired_test']}):")
    print("\n".join(verdicts(info["comparisons"])))
    for name, q in quality.items():
        print(f"\nQuality {name}: {q['n_samples']} held-out diseased test samples: PSNR {_cell(q['psnr'])} dB "
              f"(inside mask {_cell(q['psnr_mask'])}), SSIM {_cell(q['ssim'])} (inside mask "
              f"{_cell(q['ssim_mask'])}); background identical to the donor in "
              f"{q['background']['n_identical_outside_mask']}/{q['background']['n']} synthetic images.")
    print("\nSynthetic lesions per class (mean intensity inside the mask used; donor -> synthetic, real lesions "
          "of the class; k of n moved toward the class's real mean):")
    for name, ev in evidence.items():
        for lab, c in ev.items():
            print(f"  {name} {lab}: donor {c['donor_mean']:.3f} -> synthetic {c['synthetic_mean']:.3f} "
                  f"(real {lab} lesions {c['real_lesion_mean']:.3f}); {c['text']}; "
                  f"contrast {c['mean_contrast']:+.3f}")
    print("\nCost of each balance run (wall s per kept sample = generate_s / kept, from balance.json; CPU s of "
          "this process around the whole balance call, None when a finished run was reused):")
    for name, c in summary["balance_cost"].items():
        ev = "; ".join(f"{k}: {v}" for k, v in c["evidence"].items())
        print(f"  {name}: K = {c['candidates']}, scorer {c['scorer'] or '-'}, floor {c['floor']}: {c['kept']} "
              f"kept, {c['seconds_per_kept_sample']} s (CPU {c.get('cpu_s_per_kept_sample')} s) per kept sample; {ev}")
    print(f"\nCode: commit {code['commit']} (uncommitted changes: {code['uncommitted_changes']}), tiny base unet "
          f"sha256 {code['tiny_base_unet_sha256']}.")
    print(f"\nReport: {a.out / 'report' / 'summary.md'}; total {summary['total_s']} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
