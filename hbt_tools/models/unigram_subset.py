"""A Unigram tokenizer.json restricted to the pieces some texts can contain: the same token ids,
a fraction of the load time.

Why: tokenizers builds mE5's Unigram model (XLM-R's 250k pieces) in 0.7-0.9 s, nearly all of
a one-query hbt-encode and longer than loading the encoder itself. Viterbi segmentation only
looks at pieces that occur in the text, so a piece with a character the (normalized,
pre-tokenized) text lacks can never be chosen. :class:`UnigramSubset` rebuilds the tokenizer
with every such piece replaced by one placeholder string that cannot occur either; the other
pieces keep their ids and scores, the vocabulary its size and its lowest score (the unknown
character penalty is computed from it), and the normalizer, pre-tokenizer, added tokens and
post-processor are the file's own. So the ids are those of the whole tokenizer for any text
whose characters the subset covers (:meth:`covers`); tests/test_unigram_subset.py compares
them on XQuAD-R text in 11 languages. Behind a Metaspace pre-tokenizer (XLM-R's: words are the
text's spaces replaced by "▁", one "▁" before each) a piece must also consist of character
pairs that stand side by side in the texts: for 300 XQuAD-R passages in 11 languages the
characters alone kept 157k of the 250k pieces, the pairs 130k; for one German query 19k and 4k.

The file's pieces are read once per tokenizer.json into the cache
(``<cache>/tokenizers/<key>.npz``, keyed by the two files' path, size and modification time).
Not used (:meth:`UnigramSubset.open` returns None) for other models, byte fallback, or a
tokenizer.json it cannot read; nor for texts that contain an added token's text (added tokens
are split off before normalization, which could then differ from normalizing the whole text).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

from .fast_tokenizer import pad_token

CACHE_VERSION = 3
PLACEHOLDERS = range(0xE000, 0xF900)  # private-use characters: the first the texts lack


class Coverage(NamedTuple):
    """What a tokenizer built by :meth:`UnigramSubset.tokenizer` can segment exactly."""

    chars: frozenset[str]
    pairs: np.ndarray | None  # sorted (first << 21 | second) codepoints; None: any pair


def _none_in_pieces(flags: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per piece, whether none of ``flags[starts[p]:ends[p]]`` is set."""
    counts = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    return counts[ends] == counts[starts]


class UnigramSubset:
    """Builds a folder's tokenizer for the pieces given characters can form."""

    def __init__(self, arrays: dict):
        self.pieces = arrays["pieces"].tobytes().decode()  # joined by self.separator
        self.separator = str(arrays["separator"])
        self.scores = arrays["scores"]
        self.codepoints = arrays["codepoints"]  # every piece's characters, in order
        self.piece_ends = arrays["piece_ends"]
        self.always = arrays["always"]  # ids kept whatever the text: added, special, unknown
        self.unk_id = int(arrays["unk_id"])
        self.pad_token_id = int(arrays["pad_token_id"])  # -1: none
        self.added = json.loads(arrays["added"].tobytes())  # added_tokens as in the file
        self.shell = arrays["shell"].tobytes()  # tokenizer.json with a one-piece model
        self.metaspace = str(arrays["metaspace"])  # its replacement where that is the pre-tokenizer
        self._shell = None

    @classmethod
    def open(cls, folder: str) -> UnigramSubset | None:
        """The folder's subset builder, reading tokenizer.json into the cache the first time;
        None where it does not apply (the module docstring)."""
        from .offline import cache_root

        files = [os.path.join(folder, name) for name in ("tokenizer.json", "tokenizer_config.json")]
        try:
            stats = [os.stat(path) for path in files]
        except OSError:
            return None
        key = hashlib.sha256(repr([CACHE_VERSION] + [(os.path.realpath(p), s.st_size, s.st_mtime_ns)
                                                     for p, s in zip(files, stats)]).encode())
        path = os.path.join(cache_root(), "tokenizers", key.hexdigest()[:24] + ".npz")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return None if "none" in arrays else cls(dict(arrays))
        except (OSError, ValueError, KeyError):
            pass
        arrays = read_tokenizer(*files)
        _save_atomically(path, arrays or {"none": np.zeros(0)})
        return None if arrays is None else cls(arrays)

    def coverage(self, texts: list[str]) -> Coverage | None:
        """What the Unigram model can see in ``texts`` (after normalizing and pre-tokenizing),
        or None where a text holds an added token's text."""
        if any(token["content"] in text for text in texts for token in self.added):
            return None
        shell = self._shell_tokenizer()
        normalize = shell.normalizer.normalize_str if shell.normalizer else str
        normalized = [normalize(text) for text in texts]
        if self.metaspace:  # what the pre-tokenizer makes of them, or more (harmless)
            seen = (self.metaspace + " ".join(normalized)).replace(" ", self.metaspace)
            codes = np.frombuffer(seen.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
            return Coverage(frozenset(map(chr, np.unique(codes).tolist())),
                            np.unique((codes[:-1] << 21) | codes[1:]))
        chars: set[str] = set()
        for text in normalized:
            chars.update(text)
        if shell.pre_tokenizer:  # characters it brings in
            for piece, _ in shell.pre_tokenizer.pre_tokenize_str("".join(sorted(chars))):
                chars.update(piece)
        return Coverage(frozenset(chars), None)

    def covers(self, built: Coverage | None, texts: list[str]) -> bool:
        """Whether a tokenizer built for ``built`` tokenizes ``texts`` as the whole one does."""
        needed = None if built is None else self.coverage(texts)
        if needed is None or not needed.chars <= built.chars:
            return False
        return built.pairs is None or bool(np.isin(needed.pairs, built.pairs,
                                                   assume_unique=True).all())

    def tokenizer(self, coverage: Coverage):
        """The tokenizer with the pieces that only ``coverage`` can form (the module
        docstring), put together as tokenizers' own reading of the file does."""
        from tokenizers import AddedToken, Tokenizer, models

        allowed = np.zeros(0x110000, dtype=np.bool_)
        allowed[np.fromiter(map(ord, coverage.chars), dtype=np.int64,
                            count=len(coverage.chars))] = True
        starts = np.concatenate(([0], self.piece_ends[:-1]))
        keep = _none_in_pieces(~allowed[self.codepoints], starts, self.piece_ends)
        if coverage.pairs is not None:  # (c[i], c[i+1]) is in piece p for start_p <= i < end_p - 1
            codes = self.codepoints.astype(np.int64)
            pairs = (codes[:-1] << 21) | codes[1:]
            keep &= _none_in_pieces(~np.isin(pairs, coverage.pairs), starts,
                                    np.maximum(self.piece_ends - 1, starts))
        keep[self.always] = True
        # the lowest score stays the lowest: the unknown-character penalty is counted from it
        placeholder = (next(chr(c) for c in PLACEHOLDERS if not allowed[c]), self.scores.min())
        vocab = [(piece, score) if kept else placeholder for piece, score, kept in
                 zip(self.pieces.split(self.separator), self.scores.tolist(), keep.tolist())]
        shell = self._shell_tokenizer()
        tokenizer = Tokenizer(models.Unigram(vocab, self.unk_id, False))
        for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
            setattr(tokenizer, part, getattr(shell, part))
        if shell.truncation:
            tokenizer.enable_truncation(**shell.truncation)
        if shell.padding:
            tokenizer.enable_padding(**shell.padding)
        tokenizer.add_tokens([AddedToken(t["content"], single_word=t.get("single_word", False),
                                         lstrip=t.get("lstrip", False),
                                         rstrip=t.get("rstrip", False),
                                         normalized=t.get("normalized", True),
                                         special=t.get("special", False))
                              for t in self.added])
        return tokenizer

    def _shell_tokenizer(self):
        """The file's normalizer, pre-tokenizer, post-processor and decoder, around a one-piece
        model."""
        if self._shell is None:
            from tokenizers import Tokenizer

            self._shell = Tokenizer.from_str(self.shell.decode())
        return self._shell


def read_tokenizer(path: str, config_path: str) -> dict | None:
    """What :class:`UnigramSubset` keeps of tokenizer.json (see its attributes), or None."""
    try:
        with open(path, "rb") as fh:
            spec = json.load(fh)
        with open(config_path, "rb") as fh:
            config = json.load(fh)
        model = spec["model"]
        if model.get("type") != "Unigram" or model.get("byte_fallback") \
                or not isinstance(model.get("unk_id"), int):
            return None
        pieces = [piece for piece, _ in model["vocab"]]
        scores = np.asarray([float(score) for _, score in model["vocab"]], dtype=np.float64)
        added = list(spec.get("added_tokens") or [])
        added_ids = {t["content"]: t["id"] for t in added}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    text = "".join(pieces)
    separator = next((chr(c) for c in PLACEHOLDERS if chr(c) not in text), None)
    if separator is None or not pieces or "" in pieces:
        return None
    ids = {piece: i for i, piece in enumerate(pieces)}
    pad = pad_token(config)
    always = sorted({ids[t["content"]] for t in added if t["content"] in ids}
                    | {model["unk_id"]} | ({ids[pad]} if pad in ids else set()))
    shell = dict(spec, added_tokens=[], model=dict(model, vocab=[["<unk>", 0.0]], unk_id=0))
    pre_tokenizer = spec.get("pre_tokenizer") or {}
    metaspace = pre_tokenizer.get("replacement", "") \
        if pre_tokenizer.get("type") == "Metaspace" else ""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return {
        "pieces": np.frombuffer(separator.join(pieces).encode(), dtype=np.uint8),
        "separator": np.str_(separator),
        "scores": scores,
        "codepoints": codepoints,
        "piece_ends": np.cumsum([len(p) for p in pieces], dtype=np.int64),
        "always": np.asarray(always, dtype=np.int64),
        "unk_id": np.int64(model["unk_id"]),
        "pad_token_id": np.int64(added_ids.get(pad, ids.get(pad, -1)) if pad else -1),
        "added": np.frombuffer(json.dumps(added).encode(), dtype=np.uint8),
        "shell": np.frombuffer(json.dumps(shell, ensure_ascii=False).encode(), dtype=np.uint8),
        "metaspace": np.str_(metaspace if len(metaspace) == 1 else ""),
    }


def _save_atomically(path: str, arrays: dict) -> None:
    """Write the cache file whole or not at all (other processes may read it meanwhile);
    a cache that cannot be written is only slower."""
    from ..io import atomic_output

    try:
        with atomic_output(path) as fh:
            np.savez(fh, **arrays)
    except OSError:
        pass
