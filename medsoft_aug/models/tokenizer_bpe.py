"""A small CLIP byte-level BPE tokenizer built offline (for the tiny base model's CLIPTokenizer).

Layout as OpenAI CLIP's: the 256 byte-unicode symbols, the same with ``</w>`` (end of word), then one entry per
learned merge, then ``<|startoftext|>`` and ``<|endoftext|>``. Merges are learned from a text corpus (the lesion
descriptions) by plain byte-pair counting. Any text stays encodable (unknown words fall back to bytes).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from ..fsutil import atomic_write_json, atomic_write_text

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIPTokenizer's pre-tokenisation (lowercased): letter runs, single digits, punctuation runs.
_WORD_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.UNICODE)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(corpus: list[str], n_merges: int) -> list[tuple[str, str]]:
    """Up to ``n_merges`` most frequent symbol pairs, greedily (ties broken lexicographically: deterministic)."""
    b2u = bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter()
    for text in corpus:
        for w in _WORD_RE.findall(re.sub(r"\s+", " ", text.lower())):
            sym = [b2u[b] for b in w.encode("utf-8")]
            sym[-1] += "</w>"
            words[tuple(sym)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pairs[best] < 2:
            break
        merges.append(best)
        new: Counter[tuple[str, ...]] = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    return merges


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab


def build_clip_tokenizer(corpus: list[str], n_merges: int, max_length: int = 77):
    """A transformers CLIPTokenizer with merges learned from ``corpus``."""
    from transformers import CLIPTokenizer

    merges = learn_merges(corpus, n_merges)
    vocab = clip_vocab(merges)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges], model_max_length=max_length)


def save_clip_tokenizer(tokenizer, out: str | Path) -> Path:
    """Write vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json (the SD1.5 layout)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = model["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    atomic_write_json(out / "vocab.json", model["vocab"])
    atomic_write_text(out / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in merges))
    atomic_write_json(out / "special_tokens_map.json", {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
                                                        "unk_token": EOS})
    atomic_write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": int(tokenizer.model_max_length),
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS, "do_lower_case": True})
    return out
