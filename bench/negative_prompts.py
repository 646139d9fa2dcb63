"""What `balance --negative-prompts other-classes` does to the tiny base's lesions, measured with the product's engine.

    sample_data/ -> ingest -> masks build (into --out, reused)
        -> the first --rows normal slices on the base's grid (geometry crop, margin 0: the demo's)
        -> inpainted with each disease class's descriptions (generate.engine.InpaintEngine, no MSC, donor blend),
           CFG against the empty text (the paper's) and against the other class's description, per seed and
           guidance scale
        -> each sample judged by generate.evidence against the real lesions of sample_data/ (tools/
           tiny_base_checks.inpaint_check): "k of n moved toward their class", mean and median lesion contrast,
           and how many have a clear lesion (contrast of the class's sign beyond --clear)

The setting is the one of the base's own check (tools/tiny_base_checks.py); the rows are sample_data/'s (no base
model ever trained on them). Whatever the numbers say is the finding.

Usage (from the repository root):
    python bench/negative_prompts.py                       # shipped tiny base, 16 rows x 2 seeds, guidance 7.5 and 15
    python bench/negative_prompts.py --base DIR --rows 8 --seeds 0
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="tiny", help="base model (default: the shipped tiny base)")
    p.add_argument("--out", type=Path, default=Path("bench_out/negative_prompts"), help="WORK goes here (reused)")
    p.add_argument("--rows", type=int, default=16, help="normal slices inpainted per class and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 100])
    p.add_argument("--guidance", type=float, nargs="+", default=[7.5, 15.0])
    p.add_argument("--steps", type=int, default=25, help="DDIM steps (the base check's 25)")
    p.add_argument("--clear", type=float, default=0.05, help="|contrast| of a clear lesion")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def rows_of(work: Path, model):
    """sample_data's rows on the model grid of the demo (tools/build_tiny_base.load_rows)."""
    from build_tiny_base import load_rows
    from medsoft_aug.demo import DEMO_CROP_MARGIN, DEMO_GEOMETRY

    return load_rows([work], ("train", "val", "test"), model.resolution, DEMO_GEOMETRY, DEMO_CROP_MARGIN)


def measure(model, ev, prompts, a: argparse.Namespace, guidance: float, negatives: bool) -> dict:
    """Per class over every seed: k of n toward the class, mean / median contrast, clear lesions."""
    from tiny_base_checks import inpaint_check
    from medsoft_aug.generate.evidence import lesion_contrast

    out: dict = {}
    for seed in a.seeds:
        rec, images = inpaint_check(model, ev, prompts, n_rows=a.rows, steps=a.steps, guidance=guidance,
                                    blend="donor", seed=seed, negatives=negatives)
        sel = [i for i, t in enumerate(ev.text) if t == ""][:a.rows]
        for cls, outs in images.items():
            c = out.setdefault(cls, {"k": 0, "n": 0, "contrast": []})
            c["k"] += rec[cls]["k"]
            c["n"] += rec[cls]["checked"]
            c["contrast"] += [lesion_contrast(ev.image[i, 0].numpy(), o, ev.mask[i, 0].numpy())
                              for i, o in zip(sel, outs)]
    for cls, c in out.items():
        sign = 1.0 if cls == "benign" else -1.0
        con = np.asarray(c.pop("contrast"))
        c.update(mean_contrast=float(con.mean()), median_contrast=float(np.median(con)),
                 clear=int((sign * con > a.clear).sum()))
    return out


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    import torch

    torch.set_num_threads(a.threads)
    from medsoft_aug import api
    from medsoft_aug.models.base import load_base_model
    from tiny_base_checks import class_prompts

    t0 = time.time()
    work = a.out / "work"
    api.ingest(REPO / "sample_data" / "labels.csv", REPO / "sample_data", work)
    api.build_masks(work)
    model = load_base_model(a.base)
    ev = rows_of(work, model)
    prompts = class_prompts(ev.text, ev.label)
    res = {}
    print(f"base {a.base} ({model.resolution} px), {a.rows} normal rows x seeds {a.seeds}, {a.steps} DDIM steps, "
          f"donor blend, no MSC; clear = |contrast| > {a.clear}")
    print("| guidance | negatives | class | toward class | clear lesion | mean contrast | median contrast |")
    print("|---|---|---|---|---|---|---|")
    for g in a.guidance:
        for neg in (False, True):
            r = measure(model, ev, prompts, a, g, neg)
            res[f"g{g}_{'other-classes' if neg else 'none'}"] = r
            for cls, c in r.items():
                print(f"| {g:g} | {'other-classes' if neg else 'none'} | {cls} | {c['k']} of {c['n']} | "
                      f"{c['clear']} of {c['n']} | {c['mean_contrast']:+.3f} | {c['median_contrast']:+.3f} |")
    print(f"machine: {platform.machine()} CPU, torch threads {a.threads}; {time.time() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main()
