"""MODEL_DIR: what ``medsoft-aug train`` leaves and generation loads. safetensors only; never torch.load.

MODEL_DIR/
  medsoft_model.json   written last (its presence marks a complete model): format version, created time, package
                       versions, base-model and encoder references with sha256, MSC config, adapter settings
                       (gamma, D, layer count), training arguments and per-stage results, WORK provenance
                       (``work``: path, sha256 of index.csv and masks.csv, and their joint ``fingerprint``, which
                       ``balance`` compares with the WORK it is given), and the sha256 of every weight file below
  msc.safetensors      the Medical Semantic Controller (absent with --no-msc)
  adapter.safetensors  W'_k / W'_v of the decoupled cross-attention layers (absent with --no-msc)
  unet.safetensors     trained UNet tensors: all of them with --train-unet full, the text cross-attention W_k/W_v
                       with --no-msc; absent otherwise (the base UNet is untouched)
  checkpoints/         training state for --resume (per stage)
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ModelError
from ..fsutil import atomic_path, atomic_write_json, sha256_file
from ..versions import package_versions

log = logging.getLogger("medsoft_aug.models.modeldir")

META_FILE = "medsoft_model.json"
FORMAT = "medsoft-aug-model"
FORMAT_VERSION = 1
MSC_FILE, ADAPTER_FILE, UNET_FILE = "msc.safetensors", "adapter.safetensors", "unet.safetensors"
_REQUIRED = ("format", "format_version", "base_model", "resolution", "files", "no_msc")


def save_weights(path: str | Path, state: dict[str, torch.Tensor], metadata: Optional[dict[str, str]] = None) -> str:
    """Write tensors to a safetensors file atomically; returns its sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return sha256_file(path)


def load_weights(path: str | Path, expected_sha256: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file (CPU), checking its sha256 when given."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} is missing")
    if expected_sha256 and sha256_file(path) != expected_sha256:
        raise ModelError(f"{path} does not match the sha256 recorded in {META_FILE} (corrupt or replaced)")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelError(f"{path} is not a readable safetensors file ({type(e).__name__})") from e


WORK_TABLES = ("index.csv", "masks.csv")


def work_fingerprint(table_sha256: dict[str, str]) -> str:
    """Fingerprint of a training WORK: sha256 over the hashes of its index.csv and masks.csv (by name)."""
    h = hashlib.sha256()
    for name in WORK_TABLES:
        h.update(f"{name}:{table_sha256.get(name, '')}\n".encode())
    return h.hexdigest()


def work_record(work: str | Path) -> dict[str, str]:
    """What MODEL_DIR records of its training WORK: path, table hashes and their fingerprint."""
    work = Path(work)
    shas = {name: sha256_file(work / name) for name in WORK_TABLES if (work / name).is_file()}
    rec = {"path": str(work.resolve())}
    rec.update({f"{name.split('.')[0]}_sha256": sha for name, sha in shas.items()})
    rec["fingerprint"] = work_fingerprint(shas)
    return rec


def work_mismatch(meta: dict[str, Any], work: str | Path) -> Optional[str]:
    """A warning (no patient data: hashes and folder names only) when ``work`` is not the WORK the model in
    ``meta`` was trained on, else None. Models written before the fingerprint existed are compared by their
    recorded table hashes."""
    rec = meta.get("work") or {}
    trained = rec.get("fingerprint") or (
        work_fingerprint({n: rec.get(f"{n.split('.')[0]}_sha256", "") for n in WORK_TABLES})
        if rec.get("index_sha256") else None)
    if trained is None:
        return "the model records no training WORK fingerprint: cannot check it was trained on this WORK"
    now = work_record(work)["fingerprint"]
    if now == trained:
        return None
    return (f"the model was trained on another WORK (fingerprint {trained[:12]}, this WORK {now[:12]}: "
            "index.csv or masks.csv differ); synthetic samples may not match this dataset")


def write_meta(model_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Complete ``meta`` (format, created, versions, file hashes) and write medsoft_model.json atomically, last."""
    model_dir = Path(model_dir)
    files = {}
    for name in (MSC_FILE, ADAPTER_FILE, UNET_FILE):
        if (model_dir / name).is_file():
            files[name] = sha256_file(model_dir / name)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(), **meta, "files": files}
    atomic_write_json(model_dir / META_FILE, full)
    return model_dir / META_FILE


def save_model_dir(model_dir: str | Path, *, trained_unet_state: dict[str, torch.Tensor], base_info: dict[str, Any],
                   encoder_info: Optional[dict[str, Any]], msc: Optional[torch.nn.Module],
                   adapter_info: Optional[dict[str, Any]], resolution: int, **meta: Any) -> dict[str, str]:
    """Write a complete MODEL_DIR; returns {file: sha256}. medsoft_model.json is written last.

    ``trained_unet_state``: the trained UNet tensors by parameter name; W'_k/W'_v (``.to_k_ip.``/``.to_v_ip.``)
    go to adapter.safetensors, any other tensor to unet.safetensors. ``msc``: the trained MSC (its ``config``
    is recorded) or None (--no-msc). ``meta``: further JSON-serialisable fields (training arguments, ...).
    """
    from .adapter import ADAPTER_KEYS

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / META_FILE).unlink(missing_ok=True)         # incomplete until rewritten
    adapter = {k: v for k, v in trained_unet_state.items() if any(a in k for a in ADAPTER_KEYS)}
    unet = {k: v for k, v in trained_unet_state.items() if k not in adapter}
    if (msc is None) != (adapter_info is None) or bool(adapter) != (adapter_info is not None):
        raise ValueError("an MSC, adapter settings and adapter weights go together (or none with --no-msc)")
    files: dict[str, str] = {}
    for name, state in ((ADAPTER_FILE, adapter), (UNET_FILE, unet)):
        if state:
            files[name] = save_weights(model_dir / name, state)
        else:
            (model_dir / name).unlink(missing_ok=True)
    msc_info = None
    if msc is not None:
        module = getattr(msc, "module", msc)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        if not _same_weights(model_dir / MSC_FILE, state):           # keep an identical file (and its hash)
            files[MSC_FILE] = save_weights(model_dir / MSC_FILE, state,
                                           metadata={"config": json.dumps(module.config.to_dict())})
        else:
            files[MSC_FILE] = sha256_file(model_dir / MSC_FILE)
        msc_info = {"config": module.config.to_dict(), "file": MSC_FILE}
    write_meta(model_dir, {"base_model": base_info, "encoder": encoder_info, "msc": msc_info,
                           "adapter": adapter_info, "no_msc": msc is None, "resolution": int(resolution), **meta})
    return files


def _same_weights(path: Path, state: dict[str, torch.Tensor]) -> bool:
    if not path.is_file():
        return False
    from safetensors.torch import load_file

    try:
        old = load_file(str(path))
    except Exception:  # noqa: BLE001 - unreadable: rewrite it
        return False
    return set(old) == set(state) and all(torch.equal(old[k], state[k].to(old[k].dtype)) and
                                          old[k].dtype == state[k].dtype for k in state)


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    """Parse and validate medsoft_model.json (ModelError naming the problem)."""
    model_dir = Path(model_dir)
    path = model_dir / META_FILE
    if not model_dir.is_dir():
        raise ModelError(f"model folder {model_dir} does not exist")
    if not path.is_file():
        raise ModelError(f"{model_dir} is not a complete medsoft-aug model (no {META_FILE}): "
                         "train it with `medsoft-aug train` (or finish it with --resume latest)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not valid JSON ({type(e).__name__})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path} is not a medsoft-aug model description")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ModelError(f"{path} lacks {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ModelError(f"{path} has format version {meta['format_version']}; this medsoft-aug reads "
                         f"{FORMAT_VERSION}")
    need = [] if meta["no_msc"] else [MSC_FILE, ADAPTER_FILE]
    for name in need + list(meta["files"]):
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir} is missing {name}")
    return meta


@dataclass
class TrainedModel:
    """A loaded MODEL_DIR: ``base`` (BaseModel, adapter installed and trained weights applied, frozen, eval),
    ``encoder`` (MedicalEncoder) and ``msc`` (frozen MSC) - both None with --no-msc - plus gamma and meta."""

    base: Any
    encoder: Any
    msc: Any
    gamma: float
    meta: dict[str, Any]
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def no_msc(self) -> bool:
        return self.msc is None

    @property
    def resolution(self) -> int:
        return int(self.meta["resolution"])

    @torch.no_grad()
    def msc_embed(self, images: torch.Tensor, soft_masks: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """e_MSC (B, D) of x0 (B, 1, H, W) in [0, 1], M_b (B, 1, H, W) and lesion texts (Eq. 2-3)."""
        from .msc import msc_inputs

        if self.msc is None:
            raise ModelError(f"{self.path} was trained with --no-msc: it has no MSC")
        return self.msc(*msc_inputs(self.encoder, images, soft_masks, texts)).float()

    def unet_kwargs(self, e_msc: Optional[torch.Tensor]) -> dict:
        """Extra UNet keyword arguments: e_MSC for the decoupled layers (zeros = uncond), none with --no-msc."""
        from .adapter import adapter_kwargs

        if self.msc is None:
            return {}
        return adapter_kwargs(e_msc.to(self.base.unet.dtype))


def load_model_dir(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   base_model: Optional[str] = None, encoder: Optional[str] = None) -> TrainedModel:
    """Load MODEL_DIR for generation/evaluation.

    ``base_model``/``encoder`` override the recorded references (e.g. the same SD1.5 in another folder); the
    loaded model's sha256 must equal the recorded one, else ModelError ("model was trained on base X (sha ..)
    but Y (sha ..) was given"). Weight files are checked against their recorded sha256.
    """
    from .adapter import install_adapter, load_adapter_state
    from .base import load_base_model

    path = Path(path)
    meta = read_meta(path)
    base_meta = meta["base_model"]
    from .base import check_base_model
    from .encoders import check_encoder

    check_base_model(base_model or base_meta["ref"])          # configs only, both: a wrong or moved model fails
    if not meta["no_msc"]:                                    # in seconds, before the base's weights are read
        check_encoder(encoder or meta["encoder"]["ref"])
    base = load_base_model(base_model or base_meta["ref"], device=device, dtype=dtype)
    _check_ref("base", base_meta, base.ref, base.sha256)
    files = meta["files"]
    gamma = float(meta.get("adapter", {}).get("gamma", 1.0)) if meta.get("adapter") else 1.0
    enc = msc = None
    if not meta["no_msc"]:
        from .encoders import load_encoder
        from .msc import MedicalSemanticController, MSCConfig

        enc_meta = meta["encoder"]
        enc = load_encoder(encoder or enc_meta["ref"], device=device)
        _check_ref("encoder", enc_meta, enc.ref, enc.sha256)
        msc = MedicalSemanticController(MSCConfig.from_dict(meta["msc"]["config"]))
        try:
            msc.load_state_dict(load_weights(path / MSC_FILE, files.get(MSC_FILE)))
        except RuntimeError as e:
            raise ModelError(f"{path / MSC_FILE} does not fit the recorded MSC config") from e
        msc.to(device).eval().requires_grad_(False)
        ad = meta["adapter"]
        n = install_adapter(base.unet, int(ad["msc_dim"]), gamma, dtype=dtype)
        if n != int(ad["n_layers"]):
            raise ModelError(f"{path}: the base UNet has {n} cross-attention layers, the adapter {ad['n_layers']}")
        load_adapter_state(base.unet, load_weights(path / ADAPTER_FILE, files.get(ADAPTER_FILE)))
    if UNET_FILE in files:
        state = load_weights(path / UNET_FILE, files[UNET_FILE])
        own = dict(base.unet.named_parameters())
        bad = [k for k in state if k not in own or own[k].shape != state[k].shape]
        if bad:
            raise ModelError(f"{path / UNET_FILE} does not fit the base UNet (e.g. {bad[0]})")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(device=own[k].device, dtype=own[k].dtype))
    base.unet.eval().requires_grad_(False)
    return TrainedModel(base=base, encoder=enc, msc=msc, gamma=gamma, meta=meta, path=path)


def _check_ref(kind: str, recorded: dict, given_ref: str, given_sha: str) -> None:
    want = recorded.get("sha256")
    if want and given_sha != want:
        raise ModelError(f"model was trained on {kind} {recorded.get('ref')} (sha256 {want[:12]}) but "
                         f"{given_ref} (sha256 {given_sha[:12]}) was given")
