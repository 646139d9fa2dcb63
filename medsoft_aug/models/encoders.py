"""Frozen medical encoders: BiomedCLIP through open_clip, or the tiny BiomedCLIP-shaped preset.

``load_encoder(ref)`` accepts
  * ``"tiny"``: built offline from ``configs/tiny_biomedclip.json`` (timm ViT image tower + HF BERT text tower,
    D=64), deterministic random init from the config's seed, loaded through the same ``local-dir:`` code path;
  * a local folder (``local-dir:`` prefix optional) in open_clip's layout, as on the hub for
    ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``::

        FOLDER/open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}
        FOLDER/open_clip_model.safetensors  (or open_clip_pytorch_model.safetensors; a .bin only when no
                                             safetensors exists: open_clip loads it with torch.load(weights_only=True))
        FOLDER/vocab.txt, tokenizer_config.json, ... (or tokenizer.json)   the text tokenizer
        the BERT config of the text tower, found offline, first match wins:
          - ``text_cfg.hf_model_name`` is itself a folder (absolute or relative to FOLDER) holding config.json
          - FOLDER/config.json (a BERT config, e.g. copied from microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract)
          - FOLDER/<last part of hf_model_name>/config.json
          - the Hugging Face cache (works with HF_HUB_OFFLINE=1)
    The folder is never modified: the resolved BERT folder is passed to open_clip as a ``text_cfg`` override;
  * ``"hf-hub:<org>/<repo>"``: downloaded by open_clip (online only; a clear ModelError offline).
Reading such a folder (configs, BERT config resolution, weights) is :mod:`medsoft_aug.models.encoder_folder`.

Features (D = ``embed_dim``; BiomedCLIP: 512):
  * ``text_tokens`` e_t: BERT last hidden states of the lesion description, each token passed through the text
    projection (BiomedCLIP: MLP) into the joint space, (B, Lt, D), with a bool mask (B, Lt); Lt is the longest
    description in the batch (at most the context length, 256). Token 0 ([CLS]) equals the CLIP text feature.
  * ``image_tokens`` e_v: final-layer ViT patch tokens (prefix tokens dropped) after the final norm, each passed
    through the image projection, (B, Lv, D) (BiomedCLIP: Lv = 196). Not normalised.
  * ``image_embed`` e_r: the standard CLIP image feature, L2-NORMALISED to unit length (B, D), so the MSC
    regresses a scale-free target (MSE = 2 - 2 cos).
Images are grayscale or RGB in [0, 1], (B, 1|3, H, W); they are zero-padded to a centred square (no crop: a
lesion near the border is kept), resized (bicubic, antialiased) to the encoder's image size, repeated to 3
channels and normalised with the encoder's mean/std.
"""
from __future__ import annotations

import json
import logging
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..fsutil import atomic_write_json, atomic_write_text, sha256_file
from .encoder_folder import (SHIPPED_BERT_DIR, DropOpenClipNoWeightsWarnings, create_model, find_weights,
                             resolve_folder, write_text_tower_files)

log = logging.getLogger("medsoft_aug.models.encoders")

__all__ = ["SHIPPED_BERT_DIR", "TINY_CONFIG", "MedicalEncoder", "build_tiny_encoder", "check_encoder", "load_encoder",
           "save_encoder_dir", "state_dict_sha256", "tiny_config"]

TINY_CONFIG = "tiny_biomedclip.json"


class MedicalEncoder:
    """A frozen open_clip model (eval mode, no grad) with the feature extractors MedSoft-Diffusion needs."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, ref: str, sha256: str,
                 device: str | torch.device = "cpu"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.ref = ref
        self.sha256 = sha256
        self.device = torch.device(device)
        visual = model.visual
        size = getattr(visual, "image_size", 224)
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.embed_dim: int = int(model.text.output_dim if hasattr(model.text, "output_dim")
                                  else model.text_projection.shape[1])
        self.context_length: int = int(getattr(tokenizer, "context_length", 256) or 256)
        self._model_cfg: Optional[dict] = getattr(model, "_medsoft_model_cfg", None)

    # ---- preprocessing -------------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1|3, H, W) in [0, 1] -> (B, 3, S, S) normalised, S = ``image_size``, on the encoder's device."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be (B, 1|3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        if h != w:  # zero-pad to a centred square
            s = max(h, w)
            top, left = (s - h) // 2, (s - w) // 2
            x = F.pad(x, (left, s - w - left, top, s - h - top))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- features ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """e_t: (B, Lt, D) projected per-token text features and their mask (B, Lt) bool (True = real token)."""
        text = self.model.text
        if not hasattr(text, "transformer") or not hasattr(text, "proj"):
            raise ModelError(f"encoder {self.ref}: text tower {type(text).__name__} is not an HF text tower")
        ids = self.tokenizer(list(texts)).to(self.device)                      # (B, context_length)
        pad_id = text.config.pad_token_id if text.config.pad_token_id is not None else 0
        mask = ids != pad_id
        length = max(int(mask.sum(dim=1).max().item()), 1)
        ids, mask = ids[:, :length], mask[:, :length]
        out = text.transformer(input_ids=ids, attention_mask=mask.long())
        tokens = text.proj(out.last_hidden_state)                              # (B, Lt, D)
        return tokens.float(), mask

    @torch.no_grad()
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """e_v: (B, Lv, D) projected final-layer patch tokens of ``images`` (B, 1|3, H, W) in [0, 1]."""
        x = self.preprocess(images).to(self._dtype())
        visual = self.model.visual
        if hasattr(visual, "trunk"):  # open_clip TimmModel (BiomedCLIP, tiny)
            feats = visual.trunk.forward_features(x)                           # (B, prefix + Lv, W), normed
            n_prefix = int(getattr(visual.trunk, "num_prefix_tokens", 1))
            tokens = visual.head(feats[:, n_prefix:])                          # (B, Lv, D)
        elif hasattr(visual, "output_tokens") and hasattr(visual, "proj"):  # open_clip VisionTransformer
            visual.output_tokens = True
            try:
                _, tokens = visual(x)                                          # (B, Lv, W), after ln_post
            finally:
                visual.output_tokens = False
            if visual.proj is not None:
                tokens = tokens @ visual.proj
        else:
            raise ModelError(f"encoder {self.ref}: image tower {type(visual).__name__} gives no patch tokens")
        return tokens.float()

    @torch.no_grad()
    def image_embed(self, images: torch.Tensor) -> torch.Tensor:
        """e_r: (B, D) CLIP image feature of ``images`` (B, 1|3, H, W) in [0, 1], L2-normalised."""
        x = self.preprocess(images).to(self._dtype())
        return self.model.encode_image(x, normalize=True).float()

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable reference for run records / medsoft_model.json."""
        return {"ref": self.ref, "sha256": self.sha256, "embed_dim": self.embed_dim,
                "image_size": self.image_size, "context_length": self.context_length}


# ---- loading -----------------------------------------------------------------------------------------------
def load_encoder(ref: str = "tiny", device: str | torch.device = "cpu") -> MedicalEncoder:
    """Load a frozen encoder: ``"tiny"``, a local open_clip folder (``local-dir:`` optional) or ``hf-hub:...``.

    Raises ModelError (exit 3) naming the reference and the problem.
    """
    if ref == "tiny":
        return build_tiny_encoder(device=device)
    if ref.startswith("hf-hub:"):
        return _load_hub(ref, device)
    path = Path(ref[len("local-dir:"):] if ref.startswith("local-dir:") else ref).expanduser()
    if path.is_dir():
        return _load_local_dir(path, device)
    raise ModelError(f"encoder {ref!r}: not 'tiny', an existing open_clip folder, or an 'hf-hub:' id")


def check_encoder(ref: str) -> None:
    """What ``load_encoder(ref)`` would refuse, found without reading weights (milliseconds): a missing or invalid
    open_clip_config.json, no weights file, a text-tower config not found offline, missing tokenizer files."""
    if ref == "tiny" or ref.startswith("hf-hub:"):
        return
    path = Path(ref[len("local-dir:"):] if ref.startswith("local-dir:") else ref).expanduser()
    if not path.is_dir():
        raise ModelError(f"encoder {ref!r}: not 'tiny', an existing open_clip folder, or an 'hf-hub:' id")
    resolve_folder(path, require_weights=True)


def tiny_config() -> dict[str, Any]:
    """The shipped tiny encoder config (open_clip config, BERT config, WordPiece vocab, seed)."""
    text = resources.files("medsoft_aug.models").joinpath("configs", TINY_CONFIG).read_text(encoding="utf-8")
    return json.loads(text)


def build_tiny_encoder(device: str | torch.device = "cpu", seed: Optional[int] = None) -> MedicalEncoder:
    """The tiny BiomedCLIP-shaped encoder, random init from the config's seed (deterministic for a given
    torch/timm/transformers version; ``sha256`` hashes the weights so a change is detectable)."""
    cfg = tiny_config()
    seed = int(cfg["seed"] if seed is None else seed)
    with tempfile.TemporaryDirectory(prefix="medsoft_tiny_enc_") as tmp:
        folder = Path(tmp)
        write_text_tower_files(folder, cfg["bert_config"], cfg["vocab"])
        atomic_write_json(folder / "open_clip_config.json", cfg["open_clip_config"])
        quiet = DropOpenClipNoWeightsWarnings()
        logging.getLogger().addFilter(quiet)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, tokenizer = create_model(folder, require_weights=False)
        finally:
            logging.getLogger().removeFilter(quiet)
    return MedicalEncoder(model, tokenizer, ref="tiny", sha256=state_dict_sha256(model), device=device)


def save_encoder_dir(encoder: MedicalEncoder, out: str | Path, hf_model_name: Optional[str] = None) -> Path:
    """Write ``encoder`` in open_clip's ``local-dir:`` layout (config, safetensors weights, tokenizer files and
    the BERT config at the folder root), loadable with ``load_encoder(out)``. ``hf_model_name`` (e.g. the hub
    name BiomedCLIP uses) is written into text_cfg as-is, to exercise offline resolution from FOLDER/config.json.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = encoder.model
    text = model.text
    text.config.save_pretrained(out)                                            # config.json (BERT)
    hf_tok = encoder.tokenizer.tokenizer
    hf_tok.save_pretrained(out)                                                 # tokenizer.json + config
    if not (out / "vocab.txt").is_file() and hasattr(hf_tok, "get_vocab"):     # WordPiece vocab, as on the hub
        vocab = sorted(hf_tok.get_vocab().items(), key=lambda kv: kv[1])
        atomic_write_text(out / "vocab.txt", "".join(tok + "\n" for tok, _ in vocab))
    mcfg = _model_cfg_of(encoder)
    if hf_model_name is not None:
        mcfg["text_cfg"]["hf_model_name"] = hf_model_name
        mcfg["text_cfg"]["hf_tokenizer_name"] = hf_model_name
    mean = encoder._mean.flatten().tolist()
    std = encoder._std.flatten().tolist()
    atomic_write_json(out / "open_clip_config.json", {"model_cfg": mcfg,
                                                       "preprocess_cfg": {"mean": mean, "std": std}})
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out / ".open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(out / "open_clip_model.safetensors")
    return out


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Content hash of a module's weights (names, dtypes, shapes, bytes; keys sorted)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---- internals ---------------------------------------------------------------------------------------------
def _model_cfg_of(encoder: MedicalEncoder) -> dict[str, Any]:
    cfg = getattr(encoder, "_model_cfg", None)
    if cfg is None:
        raise ModelError(f"encoder {encoder.ref}: model config unknown, cannot save")
    return json.loads(json.dumps(cfg))


def _load_local_dir(folder: Path, device: str | torch.device) -> MedicalEncoder:
    model, tokenizer = create_model(folder, require_weights=True)
    weights = find_weights(folder)
    return MedicalEncoder(model, tokenizer, ref=str(folder.resolve()), sha256=sha256_file(weights), device=device)


def _load_hub(ref: str, device: str | torch.device) -> MedicalEncoder:
    import open_clip

    try:
        model = open_clip.create_model(ref)
        tokenizer = open_clip.get_tokenizer(ref)
    except Exception as e:  # noqa: BLE001 - any hub/network failure becomes one clear line
        raise ModelError(f"encoder {ref}: cannot load from the Hugging Face hub (offline or unknown id? "
                         f"{type(e).__name__}); use a local open_clip folder instead") from e
    return MedicalEncoder(model, tokenizer, ref=ref, sha256=state_dict_sha256(model), device=device)

