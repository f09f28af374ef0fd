"""tokenizer.json run by the ``tokenizers`` library, in this process or in a forked one; no torch.

Reading mE5's tokenizer.json (17 MB, 250k pieces) takes 0.6-1 s and holds the GIL, as
importing torch does, so a thread cannot overlap the two. A process forked before torch is
imported can: on the AMX Xeon, torch import + tokenizer load took 2.2-3.1 s one after the other
and 1.35-1.6 s side by side (5 runs each). hbt-encode starts one (:func:`start_tokenizer_process`)
and sends it each chunk's texts; the token ids come back over a pipe. Where hbt-encode runs
without torch (:mod:`.native_bert`, 0.2-0.3 s to load), loading the tokenizer is the longest step
of a short job: 0.85-0.93 s of a 1.1 s one-query encode, nearly all of it tokenizers building its
Unigram model from the 250k pieces (the same file with 1,000 pieces loads in 1 ms). So a Unigram
tokenizer is built for the pieces the first texts can contain (:mod:`.unigram_subset`): on the
AMD EPYC, one query from a file took 0.86-1.12 s whole process before, 0.38-0.67 s after
(4 interleaved runs each); for 300 XQuAD-R passages in 11 languages (63% of the pieces kept) the
first batch's tokens came 0.15 s sooner.
"""
from __future__ import annotations

import json
import os
import sys

from .folder import load_failure


def pad_token(tokenizer_config: dict) -> str | None:
    """The padding token's text in tokenizer_config.json (a string or an AddedToken dict)."""
    pad = tokenizer_config.get("pad_token")
    return pad.get("content") if isinstance(pad, dict) else pad


class FastTokenizer:
    """The subset of a transformers tokenizer that encoding uses, from tokenizer.json.

    A Unigram tokenizer (XLM-R's, mE5's) is built on the first call for the characters of that
    call's texts (:mod:`.unigram_subset`, the same ids: 0.15 s instead of 0.9 s for one query,
    0.7 s for passages in 11 languages); a later call with characters outside them loads the
    whole tokenizer, once."""

    def __init__(self, folder: str):
        from .unigram_subset import UnigramSubset

        self.folder = folder
        self.backend = None
        self._subset = UnigramSubset.open(folder)
        self._coverage = None  # what a subset backend covers; None: the whole tokenizer
        if self._subset is not None:
            pad = self._subset.pad_token_id
            self.pad_token_id = pad if pad >= 0 else None
            return
        self._load_whole()
        try:
            with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as fh:
                config = json.load(fh)
        except Exception as e:
            raise load_failure(e, folder) from None
        pad = pad_token(config)
        self.pad_token_id = self.backend.token_to_id(pad) if pad else None

    def _load_whole(self) -> None:
        from tokenizers import Tokenizer

        try:
            self.backend = Tokenizer.from_file(os.path.join(self.folder, "tokenizer.json"))
        except Exception as e:  # tokenizers raises a plain Exception for a malformed file
            raise load_failure(e, self.folder) from None
        self._coverage = None

    def _backend_for(self, texts: list[str]):
        """The tokenizer to run ``texts`` through, built or loaded as needed."""
        if self.backend is None:
            self._coverage = self._subset.coverage(texts)
            if self._coverage is None:
                self._load_whole()
            else:
                self.backend = self._subset.tokenizer(self._coverage)
        elif self._coverage is not None and not self._subset.covers(self._coverage, texts):
            self._load_whole()
        return self.backend

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None,
                 **_ignored) -> dict:
        """``{"input_ids": [...]}``: special tokens added, truncated to ``max_length`` (special
        tokens included), unpadded, as transformers' fast tokenizers do."""
        backend = self._backend_for(texts)
        if truncation and max_length:
            backend.enable_truncation(max_length)
        else:
            backend.no_truncation()
        backend.no_padding()
        return {"input_ids": [e.ids for e in backend.encode_batch(texts)]}


class TokenizerProcess:
    """:class:`FastTokenizer`'s interface, run by a forked worker process (one at a time)."""

    def __init__(self, folder: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                         initializer=_worker_signals,
                                         initargs=(os.getpid(),))
        self._pad_token_id = self._pool.submit(_load_worker_tokenizer, folder)  # forks now

    @property
    def pad_token_id(self) -> int | None:
        return self._pad_token_id.result()  # raises the worker's error, if loading failed

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None,
                 **_ignored) -> dict:
        return self.submit(texts, truncation, max_length).result()

    def submit(self, texts: list[str], truncation: bool = True, max_length: int | None = None):
        """A future of ``self(texts, ...)``: the worker starts on it while this process goes on
        (hbt-encode's first chunk is tokenized while torch is imported)."""
        return self._pool.submit(_worker_encode, texts, truncation, max_length)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def start_tokenizer_process(folder: str) -> TokenizerProcess | None:
    """A :class:`TokenizerProcess` for ``folder``, started now; None where forking would gain
    nothing or is unsafe: torch or tokenizers already imported (their thread pools do not
    survive a fork; the time is spent already), or not Linux (macOS and Windows spawn)."""
    if not sys.platform.startswith("linux") or {"torch", "tokenizers"} & set(sys.modules):
        return None
    try:
        return TokenizerProcess(folder)
    except OSError:  # no fork (memory, process limits): tokenize in this process
        return None


_worker_tokenizer: FastTokenizer | None = None


def _worker_signals(parent: int) -> None:
    """Die with the parent, even when it is killed (SIGKILL runs no clean-up), and leave Ctrl-C
    to the parent, which stops and shuts the worker down (else a second traceback). SIGTERM
    gets its default action back: a handler inherited from the parent (hbt-encode's raises
    SystemExit) would be caught by the executor as the task's error, and the worker would then
    wait for work forever."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _load_worker_tokenizer(folder: str) -> int | None:
    global _worker_tokenizer
    _worker_tokenizer = FastTokenizer(folder)
    return _worker_tokenizer.pad_token_id


def _worker_encode(texts: list[str], truncation: bool, max_length: int | None) -> dict:
    return _worker_tokenizer(texts, truncation=truncation, max_length=max_length)
