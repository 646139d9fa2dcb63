"""open_clip folders (``local-dir:``, BiomedCLIP's hub layout): what a folder holds, found from its configs
alone, and the model and tokenizer built from it (see :mod:`medsoft_aug.models.encoders` for the layout).

The text tower's BERT config is resolved offline (the folder, a named folder, the shipped BiomedBERT config,
the Hugging Face cache); the weights file chosen is the one open_clip would choose, and the one hashed.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ModelError
from ..fsutil import atomic_write_json, atomic_write_text

log = logging.getLogger("medsoft_aug.models.encoders")

# open_clip's own preference among the weights files of a folder (open_clip.factory._find_checkpoint_in_dir);
# the file chosen here is the file hashed and the file loaded (``_load_weights``).
_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                 "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                 "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
# text_cfg keys of the older open_clip_config.json revision (still on mirrors) -> current open_clip names
_LEGACY_TEXT_KEYS = {"proj": "hf_proj_type", "pooler_type": "hf_pooler_type"}
# BiomedCLIP's text tower, under its current and its former hub name: its public config ships in configs/
_BIOMEDBERT_NAMES = ("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract")
SHIPPED_BERT_DIR = Path(__file__).resolve().parent / "configs" / "biomedbert"
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


class DropOpenClipNoWeightsWarnings(logging.Filter):
    """open_clip warns on the root logger that a weightless local-dir model is 'initialized partially': for
    the tiny preset that random init is the point, so those two lines are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("no CLIP weights found" in msg or "initialized partially" in msg)


def write_text_tower_files(folder: Path, bert_config: dict, vocab: list[str]) -> None:
    atomic_write_json(folder / "config.json", bert_config)
    atomic_write_text(folder / "vocab.txt", "\n".join(vocab) + "\n")
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 256,
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"})


def find_weights(folder: Path) -> Optional[Path]:
    """The weights file of an open_clip folder, chosen as open_clip chooses it (named files in its preferred
    order, then any safetensors, then any .bin / .pth, alphabetically)."""
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    for pattern in ("*.safetensors", "*.bin", "*.pth"):
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if found:
            return found[0]
    return None


def _load_weights(model: torch.nn.Module, weights: Path, folder: Path) -> None:
    """Load ``weights`` into ``model`` through open_clip (key conversions, strict). A pickle (.bin / .pth: the
    format BiomedCLIP's official weights exist in) is read with ``torch.load(weights_only=True)``, which
    refuses arbitrary objects; this is the one place encoder weights are read."""
    import open_clip

    if weights.suffix != ".safetensors":
        log.warning("encoder folder %s: no safetensors weights; loading %s with torch.load(weights_only=True)",
                    folder, weights.name)
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True, device="cpu")
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never pass that advice on
        raise ModelError(f"encoder weights {weights}: refused: this pickle asks to run code or build objects "
                         "that a weights-only load does not allow; use a safetensors file or a checkpoint from "
                         "a trusted source that holds tensors only") from None
    except Exception as e:  # noqa: BLE001 - a user file: a shape mismatch, truncation or a pickle refused by
        # weights_only (pickle.UnpicklingError) all become one clear line
        raise ModelError(f"encoder folder {folder}: cannot load {weights.name} ({type(e).__name__}: "
                         f"{_gist(e)})") from e


def _gist(e: BaseException) -> str:
    """The informative part of an exception message, one line (load_state_dict puts it on line 2)."""
    lines = [" ".join(ln.split()) for ln in str(e).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    return (lines[0] if lines else "")[:200]


def _text_cfg_current(text_cfg: dict, folder: Path) -> dict:
    """text_cfg with the legacy keys (``proj``, ``pooler_type``) renamed to open_clip's current ones."""
    out = dict(text_cfg)
    for old, new in _LEGACY_TEXT_KEYS.items():
        if old in out:
            value = out.pop(old)
            if new not in out:
                out[new] = value
            log.info("encoder folder %s: legacy text_cfg key %r read as %r", folder, old, new)
    return out


def _resolve_bert_dir(folder: Path, name: str) -> Optional[Path]:
    candidates = [Path(name).expanduser(), folder / name, folder, folder / name.rstrip("/").split("/")[-1]]
    if name in _BIOMEDBERT_NAMES:
        candidates.append(SHIPPED_BERT_DIR)
    for c in candidates:
        try:
            if (c / "config.json").is_file() and "model_type" in json.loads((c / "config.json").read_text()):
                return c.resolve()
        except (OSError, ValueError):
            continue
    try:  # the HF cache (offline-safe: no network call)
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
        if isinstance(hit, str):
            return Path(hit).parent
    except Exception as e:  # noqa: BLE001 - an invalid repo id is just "not cached"
        log.debug("HF cache lookup for %s failed: %s", name, e)
    return None


def resolve_folder(folder: Path, require_weights: bool) -> dict[str, Any]:
    """Everything ``create_model`` needs from an open_clip folder, read from its configs only: ``model_cfg``,
    ``weights`` (the file open_clip would load, or None), ``text_cfg`` (current keys, BERT config resolved
    offline), ``overrides`` for ``create_model`` and ``tok_source`` (the tokenizer folder)."""
    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.is_file():
        raise ModelError(f"encoder folder {folder}: open_clip_config.json missing")
    try:
        model_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))["model_cfg"]
        text_cfg = _text_cfg_current(model_cfg.get("text_cfg", {}), folder)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(f"encoder folder {folder}: open_clip_config.json is not valid ({type(e).__name__})") from e
    weights = find_weights(folder)
    if weights is None and require_weights:
        raise ModelError(f"encoder folder {folder}: no weights (open_clip_model.safetensors or "
                         f"open_clip_pytorch_model.bin)")
    overrides: dict[str, Any] = {"text_cfg": text_cfg} if text_cfg != model_cfg.get("text_cfg", {}) else {}
    tok_source: Optional[Path] = folder if any((folder / f).is_file() for f in _TOKENIZER_FILES) else None
    if "hf_model_name" in text_cfg:
        bert_dir = _resolve_bert_dir(folder, text_cfg["hf_model_name"])
        if bert_dir is None:
            raise ModelError(
                f"encoder folder {folder}: text tower config {text_cfg['hf_model_name']!r} not found offline: "
                f"put its config.json in the folder (or in the HF cache)")
        text_cfg["hf_model_name"] = str(bert_dir)
        text_cfg["hf_model_pretrained"] = False  # tower weights come from the CLIP checkpoint
        overrides["text_cfg"] = text_cfg
        if tok_source is None and any((bert_dir / f).is_file() for f in _TOKENIZER_FILES):
            tok_source = bert_dir
    if ("hf_tokenizer_name" in text_cfg or "hf_model_name" in text_cfg) and tok_source is None:
        raise ModelError(f"encoder folder {folder}: tokenizer files (vocab.txt or tokenizer.json) missing")
    return {"model_cfg": model_cfg, "weights": weights, "text_cfg": text_cfg, "overrides": overrides,
            "tok_source": tok_source}


def create_model(folder: Path, require_weights: bool = True) -> tuple[torch.nn.Module, Any]:
    """open_clip ``create_model('local-dir:FOLDER')`` with the text tower's BERT config resolved offline, then
    the weights loaded by ``_load_weights``."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    r = resolve_folder(folder, require_weights)
    quiet = DropOpenClipNoWeightsWarnings()
    logging.getLogger().addFilter(quiet)
    try:
        model = open_clip.create_model("local-dir:" + str(folder), load_weights=False, **r["overrides"])
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as e:
        raise ModelError(f"encoder folder {folder}: cannot build the model "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    finally:
        logging.getLogger().removeFilter(quiet)
    if r["weights"] is not None:
        _load_weights(model, r["weights"], folder)
    text_cfg = r["text_cfg"]
    if "hf_tokenizer_name" in text_cfg or "hf_model_name" in text_cfg:
        tokenizer = HFTokenizer(str(r["tok_source"]), context_length=text_cfg.get("context_length", 256))
    else:
        tokenizer = open_clip.get_tokenizer("local-dir:" + str(folder))
    model._medsoft_model_cfg = {**r["model_cfg"],  # type: ignore[attr-defined]
                                "text_cfg": _text_cfg_current(r["model_cfg"].get("text_cfg", {}), folder)}
    return model, tokenizer
