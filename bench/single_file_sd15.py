"""Full-size check of the single-file path: an SD1.5-shaped checkpoint in the original layout (random fp16
weights, the tensor names and shapes of ``v1-5-pruned-emaonly.safetensors``), loaded offline by
``load_base_model`` with the SD1.5 configs shipped in the package. Prints the figures; checks nothing is silently
different (parameter counts, resolution, CLIP token ids, one text encoding).

    python bench/single_file_sd15.py [--keep DIR]

Needs about 2.2 GB of disk and 9 GB of memory; a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))   # the original-layout key names


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def build_checkpoint(out: Path) -> Path:
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from _real_layouts import original_layout
    from medsoft_aug.models.single_file import SD15_CONFIG_DIR

    cfg = {p: json.loads((SD15_CONFIG_DIR / p / "config.json").read_text()) for p in ("unet", "vae", "text_encoder")}
    torch.manual_seed(0)
    te = {k: v for k, v in cfg["text_encoder"].items() if not k.startswith("_") and k not in ("architectures",
                                                                                             "torch_dtype")}
    parts = [UNet2DConditionModel.from_config(cfg["unet"]), AutoencoderKL.from_config(cfg["vae"]),
             CLIPTextModel(CLIPTextConfig(**te))]
    sds = [{k: v.half().contiguous() for k, v in m.state_dict().items()} for m in parts]
    del parts
    state = original_layout(*sds, cfg["unet"], cfg["vae"])
    save_file(state, str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, help="write the checkpoint here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from medsoft_aug.models.base import load_base_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        path = build_checkpoint(folder / "v1-5-pruned-emaonly.safetensors")
        t1 = time.perf_counter()
        print(f"built {path.name}: {path.stat().st_size / 2**30:.2f} GiB in {t1 - t0:.1f} s")
        model = load_base_model(str(path), dtype=torch.float16)
        t2 = time.perf_counter()
        n = {p: sum(x.numel() for x in getattr(model, p).parameters()) for p in ("unet", "vae", "text_encoder")}
        print(f"load_base_model (shipped SD1.5 configs, from_single_file): {t2 - t1:.1f} s, peak RSS {_peak_gb():.1f} GB")
        print(f"parameters: {n}; resolution {model.resolution}; vae factor {model.vae_scale_factor}")
        assert n["unet"] == 859_520_964 and model.resolution == 512
        ids = model.tokenizer("a photo of a cat").input_ids
        assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
        with torch.no_grad():
            enc = model.to("cpu", torch.float32).encode_prompt(["malignant metastasis in the vertebral body"])
        print(f"encode_prompt: {tuple(enc.shape)}; sha256 {model.sha256[:16]}... ({time.perf_counter() - t2:.1f} s)")


if __name__ == "__main__":
    main()
