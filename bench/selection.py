"""Post-selection benchmark: what `balance --candidates K` costs and what it buys, on the phantom data.

    phantom sample data -> ingest -> masks build -> train (tiny) once
        -> balance twice from the same model and seed: K = 1 (no selection) and K = --candidates (--scorer)
        -> per run: seconds per kept sample and the per-sample check ("k of n moved toward their class")
        -> evaluate classify --manifest medsoft=<K=1> --manifest medsoft-selK=<K> (+ baseline, oversample,
           classical; ResNet-18 over seeds, paired t-test, real test split only)

The classify stage and the table are bench/efficacy.py's (the Table 1b protocol), with one generated method per
balance run. Prints both and writes OUT/selection.json. Whatever the numbers say is the finding.

Usage (from the repository root):
    python bench/selection.py --quick --threads 1            # the repository's 32 studies, small budgets
    python bench/selection.py --threads 1 --candidates 4     # 160 studies, fuller budgets
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from efficacy import PRESETS, sample_data, table, verdicts  # noqa: E402 - bench/ is not a package


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small budgets (bench/efficacy.py's quick preset)")
    p.add_argument("--out", type=Path, default=Path("bench_out/selection"), help="output folder (reused)")
    p.add_argument("--candidates", type=int, default=3, help="K of the selected run")
    p.add_argument("--scorer", default="classifier", choices=("classifier", "feature"))
    p.add_argument("--min-score", type=float, default=0.0, help="floor (0: keep the best candidate)")
    p.add_argument("--guidance", type=float, default=15.0, help="CFG when balancing (the demo's 15)")
    p.add_argument("--blend", default="donor", choices=("masked", "donor"), help="Eq. 7 blend (demo: donor)")
    p.add_argument("--n-studies", type=int)
    p.add_argument("--train-steps", type=int)
    p.add_argument("--steps", type=int, help="DDIM steps")
    p.add_argument("--seeds", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--resolution", type=int)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for k, v in PRESETS["quick" if a.quick else "full"].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def run(a: argparse.Namespace) -> dict:
    """Every stage (see module docstring); returns the record written to OUT/selection.json."""
    from medsoft_aug import api

    t0, times = time.time(), {}
    data = sample_data(a.out, a.n_studies, a.seed)
    tag = f"n{a.n_studies}_s{a.seed}_tf{a.test_fraction}"
    work, model = a.out / f"work_{tag}", a.out / f"model_{tag}_ts{a.train_steps}"
    api.ingest(data / "labels.csv", data, work, test_fraction=a.test_fraction, split_seed=a.seed)
    api.build_masks(work)
    api.train(work, model, max_steps=a.train_steps, seed=a.seed, device=a.device)
    times["data_train_s"] = round(time.time() - t0, 1)
    runs = {}
    for name, k in (("medsoft", 1), (f"medsoft-sel{a.candidates}", a.candidates)):
        out = a.out / f"balanced_{name}_{tag}_st{a.steps}_g{a.guidance}_{a.blend}_{a.scorer}"
        res = api.balance(work, model, out, target_ratio=1.0, steps=a.steps, guidance=a.guidance, seed=a.seed,
                          device=a.device, blend=a.blend, candidates=k, scorer=a.scorer if k > 1 else None,
                          min_score=a.min_score if k > 1 else None, force=True)
        gen_s = res["timings"].get("generate_s") or 0.0
        runs[name] = {"out": out, "candidates": k, "generated": res["generated"],
                      "seconds_per_kept_sample": round(gen_s / max(res["generated"], 1), 3),
                      "evidence": {c: e["text"] for c, e in res["evidence"].items()}}
    t = time.time()
    cres = api.evaluate_classify({n: r["out"] / "manifest.csv" for n, r in runs.items()}, a.out / "classify",
                                 seeds=a.seeds, epochs=a.epochs, resolution=a.resolution, seed=a.seed,
                                 device=a.device)
    times["classify_s"] = round(time.time() - t, 1)
    return {"command": "python bench/selection.py " + " ".join(sys.argv[1:]),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
            "runs": {n: {k: str(v) if isinstance(v, Path) else v for k, v in r.items()} for n, r in runs.items()},
            "metrics": cres.metrics, "comparisons": cres.info["comparisons"],
            "class_names": cres.info["class_names"], "minority_classes": cres.info["minority_classes"],
            "timings_s": {**times, "total_s": round(time.time() - t0, 1)}}


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    rec = run(a)
    (a.out / "selection.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
    print(f"torch threads {torch.get_num_threads()}; {a.n_studies} studies; balance {a.steps} DDIM steps, "
          f"guidance {a.guidance}, {a.blend} blend; scorer {a.scorer}, floor {a.min_score}\n")
    print("| run | K | kept | s per kept sample | per-sample check |\n|---|---|---|---|---|")
    for n, r in rec["runs"].items():
        print(f"| {n} | {r['candidates']} | {r['generated']} | {r['seconds_per_kept_sample']} | "
              f"{'; '.join(f'{c}: {t}' for c, t in r['evidence'].items())} |")
    print()
    print(table(rec["metrics"], rec["class_names"], rec["minority_classes"]))
    print("\n" + "\n".join(verdicts(rec["comparisons"])))
    print(f"\ntotal {rec['timings_s']['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
