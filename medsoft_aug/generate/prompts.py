"""Prompt files: class -> list of lesion descriptions (YAML or JSON), with the shipped defaults.

Shape::

    aliases: {other_name: key, ...}        # optional
    class_name: ["text", ...]              # or a single string

Keys are matched with :func:`medsoft_aug.generate.plan.prompt_key` (lower case, non-alphanumerics -> ``_``).
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml

from ..errors import InputError
from .plan import prompt_key

DEFAULT_NAME = "default.yaml"


def _parse(text: str, name: str) -> dict:
    try:
        data = json.loads(text) if name.lower().endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InputError(f"prompts file {name} cannot be parsed: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(data, dict):
        raise InputError(f"prompts file {name} must map class names to lists of texts")
    return data


def _normalize(data: dict, name: str) -> dict[str, list[str]]:
    aliases = data.pop("aliases", None) or {}
    if not isinstance(aliases, dict):
        raise InputError(f"prompts file {name}: 'aliases' must be a mapping")
    out: dict[str, list[str]] = {}
    for cls, texts in data.items():
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts) or not texts:
            raise InputError(f"prompts file {name}: class {cls!r} must have a non-empty list of texts")
        out[prompt_key(str(cls))] = [t.strip() for t in texts]
    for alias, target in aliases.items():
        key = prompt_key(str(target))
        if key not in out:
            raise InputError(f"prompts file {name}: alias {alias!r} points to unknown class {target!r}")
        out.setdefault(prompt_key(str(alias)), out[key])
    return out


def default_prompts() -> dict[str, list[str]]:
    """The shipped defaults (benign/malignant tumour classes, RSNA 2024 conditions by severity)."""
    text = resources.files("medsoft_aug.generate").joinpath("prompts", DEFAULT_NAME).read_text("utf-8")
    return _normalize(_parse(text, DEFAULT_NAME), DEFAULT_NAME)


def load_prompts(path: Optional[str | Path]) -> dict[str, list[str]]:
    """Load a prompts file (YAML or JSON); ``None`` gives the shipped defaults. Keys are normalized."""
    if path is None:
        return default_prompts()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"prompts file {p} not found")
    return _normalize(_parse(p.read_text("utf-8"), p.name), p.name)
