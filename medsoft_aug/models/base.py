"""The base latent-diffusion model: SD1.5 (or any diffusers-layout folder) or the shipped tiny preset.

``load_base_model(ref)`` accepts
  * ``"tiny"``: the fitted tiny model shipped in ``medsoft_aug/models/tiny_base/`` (diffusers layout, 64 px,
    VAE factor 4; see its README for how ``tools/build_tiny_base.py`` made it). While that folder is absent, ``tiny`` falls back
    to ``tiny-random`` with a warning;
  * ``"tiny-128"``: the same tiny model refitted at 128 px (``medsoft_aug/models/tiny_base_128/``, 32 x 32 latents;
    the demo's: lesions of the phantom's size and shape; about 2x slower to sample, 4x to train), same fallback;
  * ``"tiny-random"``: the same architecture from ``configs/tiny_base.json``, random init from its seed (tests);
  * a local folder in diffusers layout: ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``,
    weights as safetensors (``diffusion_pytorch_model.safetensors`` / ``model.safetensors``, or only their
    ``.fp16.safetensors`` variant); other folders (safety_checker, feature_extractor) are ignored;
  * a single-file checkpoint in the original layout (``v1-5-pruned-emaonly.safetensors``), offline, with the
    configs beside it or the shipped SD1.5 configs (``single_file``); otherwise refused with the conversion command;
  * a hub id ``org/name`` (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``), online only: only the files the
    folder loader reads are downloaded, the configs first (``base_checks.hub_file_selection``).
A missing part or non-safetensors weights give a ModelError naming the part. Before any weight is read the
configs are checked (``base_checks.check_base_configs``): inpainting and SDXL models, mismatched widths and
schedulers DDIM cannot be made from are refused with exit 3.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ModelError
from ..fsutil import sha256_file
from .base_checks import check_base_configs, hub_file_selection, read_base_configs

log = logging.getLogger("medsoft_aug.models.base")

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_PARTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
TINY_BASE_DIR = Path(__file__).resolve().parent / "tiny_base"
TINY_PRESETS = {"tiny": TINY_BASE_DIR, "tiny-128": TINY_BASE_DIR.with_name("tiny_base_128")}   # shipped fits
TINY_CONFIG = "tiny_base.json"


@dataclass
class BaseModel:
    """unet (UNet2DConditionModel), vae (AutoencoderKL), text_encoder (CLIPTextModel), tokenizer (CLIPTokenizer),
    train_scheduler (DDPMScheduler), inference_scheduler_config (for DDIMScheduler.from_config)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    train_scheduler: Any
    inference_scheduler_config: dict
    ref: str
    resolution: int                       # pixels (square): 512 for SD1.5, 64 for tiny
    weight_files: list[Path] = field(default_factory=list)
    _sha256: Optional[str] = None

    @property
    def sha256(self) -> str:
        """sha256 over the weight files' sha256s (part/name order), or of the weights when built in memory."""
        if self._sha256 is None:
            import hashlib

            h = hashlib.sha256()
            if self.weight_files:
                for p in self.weight_files:
                    h.update(f"{p.parent.name}/{p.name}:{sha256_file(p)}\n".encode())
            else:
                from .encoders import state_dict_sha256

                for m in (self.unet, self.vae, self.text_encoder):
                    h.update(state_dict_sha256(m).encode())
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def inference_scheduler(self):
        """A fresh DDIMScheduler with the model's noise schedule (paper: 50 DDIM steps)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.inference_scheduler_config)

    @torch.no_grad()
    def encode_prompt(self, texts: list[str]) -> torch.Tensor:
        """CLIP text features of ``texts``: last hidden states (B, 77, C) (SD1.5: C = 768)."""
        max_len = int(getattr(self.tokenizer, "model_max_length", 77) or 77)
        max_len = min(max_len, int(self.text_encoder.config.max_position_embeddings))
        ids = self.tokenizer(list(texts), padding="max_length", max_length=max_len, truncation=True,
                             return_tensors="pt").input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def to(self, device: str | torch.device, dtype: Optional[torch.dtype] = None) -> "BaseModel":
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device=device, dtype=dtype)
        return self

    def describe(self) -> dict[str, Any]:
        return {"ref": self.ref, "sha256": self.sha256, "resolution": self.resolution,
                "unet_params": sum(p.numel() for p in self.unet.parameters()),
                "cross_attention_dim": self.unet.config.cross_attention_dim}


def load_base_model(ref: str = "tiny", device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load the base model (see module docstring); all parts frozen and in eval mode, on ``device``/``dtype``."""
    if ref in TINY_PRESETS:
        if (TINY_PRESETS[ref] / "unet").is_dir():
            model = _load_folder(TINY_PRESETS[ref], device, dtype)
            model.ref = ref
            return model
        log.warning("the shipped tiny base model (%s) is missing; using tiny-random", TINY_PRESETS[ref])
        ref = "tiny-random"
    if ref == "tiny-random":
        return _freeze(build_tiny_base(), device, dtype)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _load_folder(path, device, dtype)
    if path.is_file():
        return _load_single_file(path, device, dtype)
    check_base_model(ref)                                     # a bad reference: one clear line
    return _load_hub(ref, device, dtype)


def check_base_model(ref: str) -> None:
    """What ``load_base_model(ref)`` would refuse, found from configs and headers only (milliseconds; no weight
    is read, nothing is downloaded): missing parts, unusable configs, refused single files. Hub ids are checked
    when loaded (their configs are downloaded first)."""
    if ref in TINY_PRESETS or ref == "tiny-random":
        return
    path = Path(ref).expanduser()
    if path.is_dir():
        missing = [p for p in PARTS if not (path / p).is_dir()]
        if missing:
            raise ModelError(f"base model folder {path}: missing {', '.join(p + '/' for p in missing)}")
        check_base_configs(read_base_configs(path), str(path))
        for part, stem in _WEIGHT_PARTS.items():
            _variant(path / part, stem)
    elif path.is_file():
        from .single_file import single_file_config

        single_file_config(path)
    elif path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ModelError(f"base model {ref!r}: not 'tiny', a diffusers-layout folder, a single-file checkpoint or "
                         f"a hub id 'org/name'")


def sd15_unet_config() -> dict[str, Any]:
    """Stable Diffusion 1.5's UNet2DConditionModel config (for tests and benchmarks with random weights)."""
    return dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)


def tiny_base_config() -> dict[str, Any]:
    """The shipped tiny architecture: unet / vae / text_encoder / scheduler configs, tokenizer corpus, seed."""
    text = resources.files("medsoft_aug.models").joinpath("configs", TINY_CONFIG).read_text(encoding="utf-8")
    return json.loads(text)


def build_tiny_base(seed: Optional[int] = None, corpus: Optional[list[str]] = None) -> BaseModel:
    """A randomly initialised tiny base model (weights depend only on ``seed``; the tokenizer's BPE merges are
    learned by ``tokenizers`` from ``corpus``, default the config's corpus). ``tools/build_tiny_base.py`` fits
    it; tests use it as is."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import build_clip_tokenizer

    cfg = tiny_base_config()
    seed = int(cfg["seed"] if seed is None else seed)
    tokenizer = build_clip_tokenizer(corpus if corpus is not None else cfg["corpus"], cfg["bpe_merges"])
    te_cfg = dict(cfg["text_encoder"], vocab_size=len(tokenizer),
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    sched = DDPMScheduler(**cfg["scheduler"])
    res = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    return BaseModel(unet, vae, text_encoder, tokenizer, sched, _ddim_config(sched.config), "tiny-random", res)


def save_base_model(model: BaseModel, out: str | Path, fp16: bool = False) -> Path:
    """Write ``model`` in diffusers layout with safetensors weights (``fp16``: weights stored in float16)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_hf():
        for name in ("unet", "vae", "text_encoder"):
            getattr(model, name).save_pretrained(out / name, safe_serialization=True)
            if fp16:
                stem = _WEIGHT_PARTS[name]
                _to_fp16_file(out / name / f"{stem}.safetensors")
    from .tokenizer import save_clip_tokenizer

    save_clip_tokenizer(model.tokenizer, out / "tokenizer")
    model.train_scheduler.save_pretrained(out / "scheduler")
    return out


# ---- internals ---------------------------------------------------------------------------------------------
def _to_fp16_file(path: Path) -> None:
    """Rewrite a safetensors file with its floating tensors in float16 (atomic)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    tmp = path.with_name("." + path.name + ".tmp")
    save_file(state, str(tmp), metadata={**meta, "format": "pt"})
    tmp.replace(path)


@contextlib.contextmanager
def _quiet_hf():
    """Silence diffusers/transformers progress bars and info chatter (the CLI owns stderr)."""
    import diffusers
    import transformers

    d_level, t_level = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    d_bar = diffusers.utils.logging.is_progress_bar_enabled()
    t_bar = transformers.utils.logging.is_progress_bar_enabled()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(d_level)
        transformers.utils.logging.set_verbosity(t_level)
        if d_bar:
            diffusers.utils.logging.enable_progress_bar()
        if t_bar:
            transformers.utils.logging.enable_progress_bar()


def _ddim_config(train_config) -> dict:
    cfg = {k: v for k, v in dict(train_config).items() if not k.startswith("_")}
    cfg.update(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return cfg


def _freeze(model: BaseModel, device, dtype) -> BaseModel:
    for m in (model.unet, model.vae, model.text_encoder):
        m.to(device=device)
        if next(m.parameters()).dtype != dtype:
            m.to(dtype=dtype)
        m.eval().requires_grad_(False)
    return model


def _variant(part_dir: Path, stem: str) -> tuple[Optional[str], Path]:
    plain = part_dir / f"{stem}.safetensors"
    if plain.is_file():
        return None, plain
    fp16 = part_dir / f"{stem}.fp16.safetensors"
    if fp16.is_file():
        return "fp16", fp16
    if any(part_dir.glob(f"{stem}*.safetensors.index.json")):
        raise ModelError(f"base model folder {part_dir.parent}: {part_dir.name}/ holds sharded weights "
                         f"(not supported; save it unsharded)")
    others = sorted(p.name for p in part_dir.glob("*.bin")) + sorted(p.name for p in part_dir.glob("*.ckpt"))
    hint = f" (found {', '.join(others)}: convert to safetensors)" if others else ""
    raise ModelError(f"base model folder {part_dir.parent}: {part_dir.name}/{stem}.safetensors missing{hint}")


def _load_folder(folder: Path, device, dtype) -> BaseModel:
    from diffusers import DDPMScheduler

    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise ModelError(f"base model folder {folder}: missing {', '.join(p + '/' for p in missing)}")
    check_base_configs(read_base_configs(folder), str(folder))          # configs only: before any weight
    files: list[Path] = []
    variants: dict[str, Optional[str]] = {}
    for part, stem in _WEIGHT_PARTS.items():
        variants[part], f = _variant(folder / part, stem)
        files.append(f)
    if not any((folder / "tokenizer" / n).is_file() for n in ("vocab.json", "tokenizer.json")):
        raise ModelError(f"base model folder {folder}: tokenizer/ has no vocab.json or tokenizer.json")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise ModelError(f"base model folder {folder}: scheduler/scheduler_config.json missing")
    try:
        with _quiet_hf():
            unet, vae, text_encoder, tokenizer, sched_cfg = _from_pretrained(folder, variants, dtype)
        train_sched = DDPMScheduler.from_config(sched_cfg)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ModelError(f"base model folder {folder}: cannot load ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    res = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    model = BaseModel(unet, vae, text_encoder, tokenizer, train_sched, _ddim_config(train_sched.config),
                      str(folder.resolve()), res, files)
    return _freeze(model, device, dtype)


def _load_single_file(path: Path, device, dtype) -> BaseModel:
    """An original-layout checkpoint (``v1-5-pruned-emaonly.safetensors``): see ``single_file``."""
    from diffusers import DDPMScheduler

    from .single_file import load_single_file, single_file_config

    config_dir = single_file_config(path)                     # header only: refusals before any weight
    with _quiet_hf():
        unet, vae, text_encoder, tokenizer, sched_cfg = load_single_file(path, config_dir, dtype)
    train_sched = DDPMScheduler.from_config(sched_cfg)
    res = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    model = BaseModel(unet, vae, text_encoder, tokenizer, train_sched, _ddim_config(train_sched.config),
                      str(path.resolve()), res, [path])
    return _freeze(model, device, dtype)


def _from_pretrained(folder: Path, variants: dict, dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", use_safetensors=True,
                                                variant=variants["unet"], torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", use_safetensors=True,
                                        variant=variants["vae"], torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", use_safetensors=True,
                                                 variant=variants["text_encoder"], dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    sched_cfg = DDPMScheduler.load_config(folder, subfolder="scheduler")
    return unet, vae, text_encoder, tokenizer, sched_cfg


def _load_hub(ref: str, device, dtype) -> BaseModel:
    """Download exactly the files the folder loader reads (configs first: a wrong model is refused before any
    weight is downloaded), then load the snapshot folder. Offline, a snapshot already in the HF cache is used."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = list(HfApi().list_repo_files(ref))
    except Exception as e:  # noqa: BLE001 - offline / unknown id / auth: try the cache, else one clear line
        path = _cached_snapshot(ref)
        if path is None:
            raise ModelError(f"base model {ref!r}: cannot reach the Hugging Face hub (offline or unknown id? "
                             f"{type(e).__name__}) and it is not in the HF cache; use a local diffusers-layout "
                             f"folder instead") from e
    else:
        chosen = hub_file_selection(files)
        try:
            path = Path(snapshot_download(ref, allow_patterns=[f for f in chosen if not f.endswith(".safetensors")]))
            check_base_configs(read_base_configs(path), ref)
            path = Path(snapshot_download(ref, allow_patterns=chosen))
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - network / disk failures mid-download: one clear line
            raise ModelError(f"base model {ref!r}: download from the Hugging Face hub failed "
                             f"({type(e).__name__})") from e
    model = _load_folder(path, device, dtype)
    model.ref = ref
    return model


def _cached_snapshot(ref: str) -> Optional[Path]:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or an invalid id): the caller says so
        return None
