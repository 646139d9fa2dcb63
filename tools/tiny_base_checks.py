"""Checks and README of the tiny base build (``tools/build_tiny_base.py``), with the product's own pieces.

``check``: VAE PSNR (``evaluate.metrics.psnr``) and inpainting of normal slices with each class's descriptions
through ``generate.engine.InpaintEngine`` (no MSC), each sample judged by ``generate.evidence``;
``viz.contact_sheet`` draws them. ``readme``: the model folder's README from the build record (fit.json).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from medsoft_aug.evaluate.metrics import psnr
from medsoft_aug.generate.engine import InpaintEngine, SamplingOptions
from medsoft_aug.generate.evidence import sample_evidence, summarize
from medsoft_aug.geometry import composite
from medsoft_aug.models.base import BaseModel
from medsoft_aug.viz import contact_sheet

CLASSES = ("benign", "malignant")


# ---- checks with the product's engine ----------------------------------------------------------------------
def class_prompts(texts: list[str], labels: list[str]) -> dict[str, list[str]]:
    """Each disease class's distinct training descriptions (in first-seen order)."""
    out = {c: list(dict.fromkeys(t for t, lab in zip(texts, labels) if lab == c and t)) for c in CLASSES}
    return {c: v for c, v in out.items() if v}


@torch.no_grad()
def inpaint_check(model: BaseModel, ev, prompts: dict[str, list[str]], *, n_rows: int, steps: int,
                  guidance: float, blend: str, seed: int,
                  negatives: bool = False) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Inpaint the first ``n_rows`` normal rows of ``ev`` with each class's descriptions in turn (one per row)
    through ``InpaintEngine`` (no MSC); per-sample evidence against the real lesions of ``ev``. ``negatives``:
    CFG against the other class's description of the same row (``balance --negative-prompts other-classes``)
    instead of the empty text."""
    engine = InpaintEngine(model.unet, model.vae, model.inference_scheduler(), model.resolution)
    sel = [i for i, lab in enumerate(ev.label) if ev.text[i] == ""][:n_rows]
    x0, mk = ev.image[sel], ev.mask[sel]
    uncond = model.encode_prompt([""])
    opts = SamplingOptions(steps=steps, guidance=guidance, blend=blend)
    record, images = {"normal_rows": len(sel)}, {}
    for cls, texts in prompts.items():
        real = [i for i, lab in enumerate(ev.label) if lab == cls]
        ref = float(np.mean([_mean(ev.image[i], ev.mask[i]) for i in real])) if real else None
        per_row = [texts[i % len(texts)] for i in range(len(sel))]
        others = [t for c, ts in prompts.items() if c != cls for t in ts]
        neg = model.encode_prompt([others[i % len(others)] for i in range(len(sel))]) if negatives and others \
            else uncond
        dec = engine.denoise(x0, mk, model.encode_prompt(per_row), neg, None,
                             [seed + i for i in range(len(sel))], opts)
        outs = [composite(x0[i, 0].numpy(), dec[i, 0].numpy(), mk[i, 0].numpy()) for i in range(len(sel))]
        rows = [{"label": cls, **sample_evidence(x0[i, 0].numpy(), outs[i], mk[i, 0].numpy(), reference_mean=ref)}
                for i in range(len(sel))]
        record[cls] = {**summarize(rows)[cls], "real_lesion_mean": ref,
                       "synthetic_mean": float(np.mean([r["synthetic_mean"] for r in rows])),
                       "donor_mean": float(np.mean([r["donor_mean"] for r in rows])), "prompts": len(set(per_row))}
        images[cls] = outs
    return record, images


def _mean(image: torch.Tensor, mask: torch.Tensor) -> float:
    return float((image * mask).sum() / mask.sum().clamp_min(1e-12))


def check(model: BaseModel, ev, prompts: dict[str, list[str]], sheet: Optional[Path], *, seed: int = 0,
          guidance: float = 15.0, steps: int = 25, n_rows: int = 8) -> dict:
    """VAE PSNR and the inpainting checks (demo blend ``donor`` and the paper's ``masked``); the contact sheet
    (normal slice with its mask outlined, then one column per class, ``donor`` blend; a real lesion row)."""
    engine = InpaintEngine(model.unet, model.vae, model.inference_scheduler(), model.resolution)
    rec = engine.decode(engine.encode(ev.image)).numpy()
    img, msk = ev.image.numpy(), ev.mask.numpy()
    out = {"eval_rows": len(ev.text), "vae_psnr_db": round(psnr(img, rec), 2),
           "vae_psnr_db_in_mask": round(psnr(img, rec, weights=msk), 2), "eval_guidance": guidance,
           "eval_steps": steps}
    shown = {}
    for blend in ("donor", "masked"):
        out[f"inpaint_{blend}"], images = inpaint_check(model, ev, prompts, n_rows=n_rows, steps=steps,
                                                        guidance=guidance, blend=blend, seed=seed)
        shown = shown or images
    out["inpaint_donor_negatives"], _ = inpaint_check(model, ev, prompts, n_rows=n_rows, steps=steps,
                                                      guidance=guidance, blend="donor", seed=seed, negatives=True)
    if sheet is not None:
        sel = [i for i, t in enumerate(ev.text) if t == ""][:n_rows]
        rows = [[ev.image[i, 0].numpy(), *(shown[c][k] for c in shown)] for k, i in enumerate(sel)]
        overlays = [[ev.mask[i, 0].numpy()] + [None] * len(shown) for i in sel]
        labels = [f"normal #{k}" for k in range(len(sel))]
        for c in shown:                                                            # one real lesion per class
            j = next((i for i, lab in enumerate(ev.label) if lab == c), None)
            if j is not None:
                rows.append([ev.image[j, 0].numpy()])
                overlays.append([ev.mask[j, 0].numpy()])
                labels.append(f"real {c}")
        contact_sheet(rows, sheet, overlays=overlays, row_labels=labels, cell_size=(128, 128),
                      col_labels=["slice (mask outlined)"] + [f"{c} prompt" for c in shown])
    return out



def readme(rec: dict, out: Path) -> str:
    """README of the shipped tiny base model: how it was made, on what, how long, how good (over 60 lines: most
    of it is the template text)."""
    size = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    commands = "\n".join(rec["commands"])

    def line(blend: str, cls: str) -> str:
        r = rec.get(f"inpaint_{blend}", {}).get(cls)
        if not r:
            return f"{cls}: -"
        return (f"{cls}: {r['k']} of {r['checked']} moved toward their class (mean inside the mask "
                f"{r['donor_mean']:.3f} -> {r['synthetic_mean']:.3f}, real {cls} lesions {r['real_lesion_mean']:.3f};"
                f" mean lesion contrast {r['mean_contrast']:+.3f})")

    more = ("; each later command continues the previous output with --init") if len(rec["commands"]) > 1 else ""
    view = ("whole slice" if rec.get("geometry", "pad") == "pad" else
            f"the square around the mask, geometry crop, margin {rec.get('crop_margin')}")
    return f"""# medsoft-aug tiny base model (`--base-model tiny`)

A Stable-Diffusion-shaped latent diffusion model small enough for a CPU, in diffusers layout (unet/, vae/,
text_encoder/, tokenizer/, scheduler/; fp16 safetensors, {size / 2**20:.1f} MiB of weights). Architecture:
`medsoft_aug/models/configs/tiny_base.json` ({rec['resolution']} x {rec['resolution']} px, VAE factor 4, a
text-conditioned UNet with cross-attention, CLIP text encoder 64 wide with a byte-level BPE vocabulary that
Hugging Face `tokenizers` learned from the training descriptions). It exists so that the demo and the tests run
offline on a CPU; it is not a medical model.

## How it was made

Training data: a phantom set made like `sample_data/` but with another seed, so that no demo row (in particular
no test-split row) ever fed the base model:

```bash
python -m medsoft_aug.sample_data /tmp/phantom_fit --n-studies 160 --seed 11
medsoft-aug ingest --labels /tmp/phantom_fit/labels.csv --images /tmp/phantom_fit --out /tmp/phw
medsoft-aug masks build /tmp/phw
medsoft-aug ingest --labels sample_data/labels.csv --images sample_data --out /tmp/mw_s && medsoft-aug masks build /tmp/mw_s
# the commands with --geometry crop fit on a larger draw of the same seed (320 studies):
python -m medsoft_aug.sample_data /tmp/lz/phantom_fit --n-studies 320 --seed 11
medsoft-aug ingest --labels /tmp/lz/phantom_fit/labels.csv --images /tmp/lz/phantom_fit --out /tmp/lz/phw
medsoft-aug masks build /tmp/lz/phw
medsoft-aug ingest --labels sample_data/labels.csv --images sample_data --out /tmp/lz/mw_s && medsoft-aug masks build /tmp/lz/mw_s
{commands}
```
(`tools/build_tiny_base.py`: VAE fitted first, then UNet + text encoder trained together on the product's
training loop, EMA weights{more}.)
{rec['train_rows']} ingested + masked slices ({', '.join(f'{k} {v}' for k, v in rec['labels'].items())}),
{rec['vae_steps_all']} VAE steps and {rec['unet_steps_all']} UNet steps of batch {rec['batch']}.
Time: {rec['total_seconds_all'] / 60:.1f} min in all on {rec['machine']} shared with other jobs (1-minute load
average {rec['load_average']} at the end), {rec['torch_threads']} torch thread(s).

## Checks (on the {rec['eval_rows']} slices of `sample_data/`, none of which was trained on)

Made by the tool with the product's engine (`generate.engine.InpaintEngine`, no MSC), judged per sample by
`generate.evidence` against the real lesions of `sample_data/`:
Every slice is seen on the model grid as in training ({view}).
- VAE reconstruction PSNR: {rec['vae_psnr_db']} dB (model-grid view), {rec['vae_psnr_db_in_mask']} dB inside the
  soft masks (`evaluate.metrics.psnr`).
- Inpainting into the soft masks of {rec['inpaint_donor']['normal_rows']} normal slices ({rec['eval_steps']} DDIM
  steps, guidance {rec['eval_guidance']}, each slice with its own description of the class):
  - `--blend donor` (z_m = VAE(x0), the demo's): {line('donor', 'benign')}; {line('donor', 'malignant')}
  - `--blend masked` (z_m = VAE(I_m), the paper's): {line('masked', 'benign')}; {line('masked', 'malignant')}
  - `--blend donor --negative-prompts other-classes` (CFG against the other class's description, the demo's):
    {line('donor_negatives', 'benign')}; {line('donor_negatives', 'malignant')}
- `contact_sheet.png`: per row a normal slice (mask outlined) and its inpaintings with a benign and a malignant
  description (`--blend donor`); last rows: a real lesion of each class.

Full record: `fit.json`.
"""
