"""OpenAI CLIP's BPE tokenizer files (SD1.5's ``tokenizer/``), written offline from the BPE merges file that
open_clip ships (``open_clip/bpe_simple_vocab_16e6.txt.gz``, the file OpenAI's CLIP tokenizer is built from).

The vocabulary is derived exactly as CLIP derives it: the 256 byte symbols, the same with ``</w>``, one entry
per merge (48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>``: 49,408 tokens, the ``vocab.json`` /
``merges.txt`` pair of ``openai/clip-vit-large-patch14`` that SD1.5's tokenizer folder holds.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from ..fsutil import atomic_write_text

N_MERGES = 49152 - 256 - 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_merges() -> list[str]:
    """The 48,894 merges ("a b" lines) of OpenAI CLIP's tokenizer, from open_clip's packaged file."""
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    return lines[1:N_MERGES + 1]


def write_clip_tokenizer(out: str | Path, model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json (CLIPTokenizer)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    atomic_write_text(out / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    atomic_write_text(out / "special_tokens_map.json", json.dumps(special, indent=2))
    atomic_write_text(out / "tokenizer_config.json", json.dumps({
        **special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
        "model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer"}, indent=2))
    return out
