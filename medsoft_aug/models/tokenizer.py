"""The tiny text model's CLIP byte-level BPE tokenizer, trained and saved with Hugging Face ``tokenizers``.

Vocabulary layout as OpenAI CLIP's: the 256 byte-unicode symbols, the same with ``</w>`` (end of word), one
entry per learned merge, then ``<|startoftext|>`` and ``<|endoftext|>``, so any text stays encodable (unknown
words fall back to bytes). Merges are learned by ``tokenizers.trainers.BpeTrainer`` on the words CLIP's
pre-tokenizer makes (lowercased; letter runs, single digits, punctuation runs). The saved folder (``vocab.json``,
``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``) is SD1.5's layout
and loads with transformers' ``CLIPTokenizer.from_pretrained``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..fsutil import atomic_write_json

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIPTokenizer's pre-tokenisation pattern (transformers' CLIP fast tokenizer uses the same).
_CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _clip_pipeline(tok):
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def learn_merges(corpus: list[str], n_merges: int) -> list[tuple[str, str]]:
    """The first ``n_merges`` merges ``BpeTrainer`` learns from ``corpus`` (pairs seen at least twice)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = _clip_pipeline(Tokenizer(models.BPE(end_of_word_suffix="</w>")))
    trainer = trainers.BpeTrainer(vocab_size=1_000_000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator(list(corpus), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    learned = {tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges}
    return _deterministic_order(tok, corpus, learned)[:n_merges]


def _deterministic_order(tok, corpus: list[str], learned: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """``learned`` in greedy BPE order (most frequent pair first), ties broken by the pair's text.

    Written here because BpeTrainer breaks count ties in hash-map order: the same corpus gave two different
    merge orders (the same set) in ten runs, which changes the vocabulary's ids and so every model built on it.
    Words come from the same normalizer and pre-tokenizer as the trainer's."""
    from collections import Counter

    counts: Counter = Counter()
    for text in corpus:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            counts[(*word[:-1], word[-1] + "</w>")] += 1
    words = dict(counts)
    order: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                if pair in learned:
                    pairs[pair] += n
        if not pairs:
            return order
        best = min(pairs, key=lambda p: (-pairs[p], p))
        order.append(best)
        learned = learned - {best}
        words = {_merge(w, best): n for w, n in words.items()}


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def clip_bpe(corpus: list[str], n_merges: int):
    """A ``tokenizers.Tokenizer`` (CLIP layout, see module docstring) with merges learned from ``corpus``."""
    from tokenizers import Tokenizer, models, processors
    from tokenizers.pre_tokenizers import ByteLevel

    merges = learn_merges(corpus, n_merges)
    base = sorted(ByteLevel.alphabet())          # by code point = CLIP's order (printable bytes map to themselves)
    vocab: dict[str, int] = {}
    for t in base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]:
        vocab.setdefault(t, len(vocab))
    tok = _clip_pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>",
                                              unk_token=EOS)))
    tok.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]),
                                                      add_prefix_space=False, trim_offsets=False)
    return tok


def build_clip_tokenizer(corpus: list[str], n_merges: int, max_length: int = 77):
    """A transformers ``CLIPTokenizer`` whose merges ``tokenizers`` learned from ``corpus``."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(clip_bpe(corpus, n_merges), Path(tmp), max_length)
        return CLIPTokenizer.from_pretrained(tmp)


def save_clip_tokenizer(tokenizer, out: str | Path) -> Path:
    """Write a ``CLIPTokenizer`` (or a ``tokenizers.Tokenizer``) in SD1.5's tokenizer/ layout."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return write_tokenizer_files(backend, Path(out), int(getattr(tokenizer, "model_max_length", 77)))


def write_tokenizer_files(tok, out: Path, max_length: int = 77) -> Path:
    """vocab.json + merges.txt (``tokenizers``' BPE model files), tokenizer.json and the transformers configs."""
    out.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out))
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    atomic_write_json(out / "special_tokens_map.json", special)
    atomic_write_json(out / "tokenizer_config.json", {"tokenizer_class": "CLIPTokenizer",
                                                      "model_max_length": int(max_length), **special,
                                                      "do_lower_case": True})
    return out
