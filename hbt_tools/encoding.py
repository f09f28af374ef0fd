"""Encode JSONL texts into ``NAME.npy`` embeddings + ``NAME.ids.jsonl`` (the job of hbt-encode).

Streaming: the input is read in chunks of ``chunk_rows`` rows; a background thread reads,
validates and tokenizes the next chunk while the model encodes the current one. Within a chunk
rows are sorted by token length and cut into batches of at most ``batch_tokens`` padded tokens
(and ``batch_size`` rows), so little compute goes to padding; the embeddings are put back in
input order and appended to a temporary ``.npy`` whose header is patched with the row count at
the end. Both files are renamed to their final names only when everything succeeded, so an
error or a ``kill -9`` never leaves a truncated output under the final names.

Text of a row: ``fields`` (``"title?,text,context?"``: listed fields joined by a space, ``?``
marks a field that may be absent; empty values are skipped) or a ``template`` such as
``"{title}: {text}"``; then the model's query or passage prefix.

Sharding: ``shard=(i, n)`` encodes the rows whose index (0-based, counting non-blank lines)
satisfies ``index % n == i``; every machine streams the whole file, but only parses and encodes
its share. The shards' outputs together hold every row once (hbt-search merges their runs).

Memory: one chunk of texts and embeddings, plus 16 bytes per encoded row (a hash and the line
number of its id, for the duplicate-id check at the end): ~0.5 GB for MIRACL-en's 32.9M
passages in one process, 1/N of that per shard.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import string
import sys
import tempfile
import threading
import time
from typing import IO, Iterator

import numpy as np

from .io import (InputError, STDIO, display_name, dumps_jsonl, field, iter_lines,
                 parse_json_line, sidecar_path)
from .models.fast_tokenizer import start_tokenizer_process
from .models.folder import (check_model_folder, inference_folder, position_limit,
                            retrieval_settings)

KINDS = ("query", "passage")
DEFAULT_FIELDS = {"query": "text", "passage": "title?,text,context?"}
FIELD_PRESETS = {
    "lareqa": "text,context",  # LAReQA candidates: answer sentence + its paragraph
    "miracl": "title?,text",  # MIRACL passages: title + text
    "sentence": "text",  # LAReQA's sentence-only variant
}
OUTPUT_DTYPES = {"float32": np.float32, "float16": np.float16}
# Padded tokens per forward pass by device type. On the AMX Xeon, oneDNN's bf16 linear layers
# ran at half their rate once a batch reached 16,384 tokens (the 1,152- and 1,536-wide outputs,
# 38-50 MB: 436-522 vs 710-2,038 GFLOP/s at 4,096 tokens), and hbt-encode took 5.96 vs 7.97 s
# whole process on 300 XQuAD-R candidates (5 interleaved runs). GPUs want big batches.
BATCH_TOKENS = {"cpu": 4096, "cuda": 16384}


# ---------------------------------------------------------------- the text of a row

@dataclasses.dataclass(frozen=True)
class TextRecipe:
    """How a row's text is built: joined fields, or a ``str.format`` template of fields."""

    fields: tuple[tuple[str, bool], ...] = ()  # (name, required)
    template: str | None = None

    @classmethod
    def from_options(cls, kind: str, fields: str | None = None,
                     template: str | None = None) -> "TextRecipe":
        if fields and template:
            raise InputError("give --fields or --template, not both", field="template")
        if template is not None:
            return cls(fields=tuple((name, True) for name in template_fields(template)),
                       template=template)
        spec = fields or DEFAULT_FIELDS[kind]
        return cls(fields=parse_fields(FIELD_PRESETS.get(spec, spec)))

    def build(self, obj: dict, path, line: int) -> str:
        values = {}
        for name, required in self.fields:
            if not required and obj.get(name) is None:
                continue
            values[name] = field(obj, name, str, path, line)
        if self.template is not None:
            return self.template.format_map(values)
        return " ".join(v for v in values.values() if v)


def parse_fields(spec: str) -> tuple[tuple[str, bool], ...]:
    """``"title?,text"`` -> ``(("title", False), ("text", True))``."""
    parsed = []
    for part in spec.split(","):
        name = part.strip()
        required = not name.endswith("?")
        name = name.rstrip("?").strip()
        if not name.isidentifier():
            raise InputError(f"bad field name {part.strip()!r} in {spec!r} "
                             f"(comma-separated names, '?' = may be absent; presets: "
                             f"{', '.join(FIELD_PRESETS)})", field="fields")
        parsed.append((name, required))
    if all(not required for _, required in parsed):
        raise InputError(f"{spec!r}: at least one field must be required (no '?')",
                         field="fields")
    return tuple(parsed)


def template_fields(template: str) -> list[str]:
    """Field names of a ``{name}`` template; only plain names (no attributes, indexes)."""
    names = []
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as e:
        raise InputError(f"bad template {template!r} ({e})", field="template") from None
    for _, name, _, _ in parts:
        if name is None:
            continue
        if not name.isidentifier():
            raise InputError(f"bad template {template!r}: use plain {{field}} names",
                             field="template")
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(f"template {template!r} names no field", field="template")
    return names


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)`` (shard 2 of 8, counted from 0); None -> ``(0, 1)``."""
    if spec is None:
        return 0, 1
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise InputError(f"bad shard {spec!r}: expected I/N, e.g. 0/4", field="shard") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"bad shard {spec!r}: need 0 <= I < N", field="shard")
    return index, count


# ---------------------------------------------------------------- reading rows

@dataclasses.dataclass
class Chunk:
    """Rows of the input that are encoded together (sorted by length inside)."""

    ids: list[str]
    langs: list[str | None]
    lines: list[int]
    texts: list[str]
    input_bytes: int = 0  # bytes of input consumed for these rows (progress)
    token_ids: list[list[int]] | None = None


def iter_chunks(path, recipe: TextRecipe, chunk_rows: int,
                shard: tuple[int, int] = (0, 1)) -> Iterator[Chunk]:
    """Validated rows of this shard, ``chunk_rows`` at a time."""
    index, count = shard
    chunk = Chunk([], [], [], [])
    row = -1
    for row, (lineno, raw) in enumerate(iter_lines(path)):
        chunk.input_bytes += len(raw) + 1
        if row % count != index:
            continue
        obj = parse_json_line(raw, path, lineno)
        chunk.ids.append(str(field(obj, "id", (str, int), path, lineno)))
        chunk.langs.append(field(obj, "lang", str, path, lineno, default=None, nonempty=True))
        chunk.lines.append(lineno)
        chunk.texts.append(recipe.build(obj, path, lineno))
        if len(chunk.ids) == chunk_rows:
            yield chunk
            chunk = Chunk([], [], [], [])
    if row < 0:
        raise InputError("empty input: no JSON lines", path)
    if chunk.ids or chunk.input_bytes:
        yield chunk


def prefetch(items: Iterator, prepare, depth: int = 1) -> Iterator:
    """Yield ``prepare(item)`` for each item, computing the next ones in a background thread
    (tokenizing the next chunk while the model encodes this one). Errors re-raise in order."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                prepared = prepare(item)
                while not stop.is_set():
                    try:
                        buffer.put((prepared, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as e:  # handed to the consumer, raised there
            buffer.put((None, e))

    worker = threading.Thread(target=produce, name="hbt-encode-reader", daemon=True)
    worker.start()
    try:
        while True:
            prepared, error = buffer.get()
            if error is not None:
                raise error
            if prepared is done:
                return
            yield prepared
    finally:
        stop.set()


# ---------------------------------------------------------------- model side

def tokenize_unpadded(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_length`` (as ``models.encoder.tokenize``
    does, without padding)."""
    if not texts:
        return []
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False,
                    return_attention_mask=False, return_token_type_ids=False)
    return enc["input_ids"]


def length_batches(lengths: list[int], batch_tokens: int, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length: longest first, each batch at most
    ``batch_size`` rows and ``batch_tokens`` padded tokens (a single longer row still goes)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = lengths[order[start]]
        rows = max(1, min(batch_size, batch_tokens // max(longest, 1)))
        batches.append(order[start:start + rows])
        start += rows
    return batches


def embed_token_ids(biencoder, token_ids: list[list[int]], pad_id: int,
                    batch_tokens: int | None, batch_size: int, on_batch=None) -> np.ndarray:
    """Embeddings (float32, input order) of already tokenized texts, computed on the device
    the model is on; ``batch_tokens`` None = that device's :data:`BATCH_TOKENS`.
    ``biencoder``: a :class:`.models.encoder.BiEncoder` or a
    :class:`.models.native_bert.NativeBiEncoder`."""
    batch_tokens = batch_tokens or BATCH_TOKENS.get(biencoder.device_type, BATCH_TOKENS["cuda"])
    dim = biencoder.config.hidden_size
    out = np.empty((len(token_ids), dim), dtype=np.float32)
    lengths = [len(ids) for ids in token_ids]
    for rows in length_batches(lengths, batch_tokens, batch_size):
        width = lengths[rows[0]]
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for j, r in enumerate(rows):
            input_ids[j, :lengths[r]] = token_ids[r]
            mask[j, :lengths[r]] = 1
        out[rows] = biencoder.embed_arrays(input_ids, mask)
        if on_batch is not None:
            on_batch(int(mask.sum()))
    return out


def prepare_model(biencoder, dtype, device="cpu"):
    """Eval mode, weights cast to ``dtype`` (bf16 on AMX / AVX512-BF16 CPUs and Ampere+ GPUs)
    on ``device``."""
    biencoder.eval()
    biencoder.to(device=device, dtype=dtype)
    return biencoder


def encode_texts(biencoder, tokenizer, texts: list[str], kind: str = "passage",
                 batch_tokens: int | None = None, batch_size: int = 256) -> np.ndarray:
    """Python API: embeddings (float32) of ``texts``, prefixed and truncated per the model's
    settings for ``kind``. The model is used as it is (call :func:`prepare_model` first)."""
    settings = biencoder.settings
    prefixed = [settings.prefix(kind) + t for t in texts]
    token_ids = tokenize_unpadded(tokenizer, prefixed, settings.max_length(kind))
    return embed_token_ids(biencoder, token_ids, tokenizer.pad_token_id, batch_tokens,
                           batch_size)


# ---------------------------------------------------------------- output

NPY_HEADER_BYTES = 128  # fixed, so the row count can be written in place at the end


def npy_header(dtype, rows: int, dim: int) -> bytes:
    """A version-1.0 .npy header for a C-order ``(rows, dim)`` array, NPY_HEADER_BYTES long."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    prelude = b"\x93NUMPY\x01\x00"
    room = NPY_HEADER_BYTES - len(prelude) - 2
    body = text.encode("latin1").ljust(room - 1) + b"\n"
    if len(body) != room:
        raise ValueError(f"shape ({rows}, {dim}) does not fit the .npy header")
    return prelude + room.to_bytes(2, "little") + body


class EmbeddingWriter:
    """Streams rows into temporary ``.NAME.npy.tmp*`` / ``.NAME.ids.jsonl.tmp*`` files beside
    the output; :meth:`commit` checks for duplicate ids, fixes the header and renames both
    (sidecar first); :meth:`abort` removes them."""

    def __init__(self, npy_path: str, dim: int, dtype=np.float32):
        self.npy_path, self.side_path = os.fspath(npy_path), sidecar_path(npy_path)
        self.dim, self.dtype, self.rows = dim, np.dtype(dtype), 0
        directory = os.path.dirname(os.path.abspath(self.npy_path))
        os.makedirs(directory, exist_ok=True)
        self._files: list[tuple[IO[bytes], str]] = []
        self.npy = self._temp(self.npy_path)
        self.side = self._temp(self.side_path)
        self.npy.write(npy_header(self.dtype, 0, dim))
        self._id_hashes: list[np.ndarray] = []
        self._id_lines: list[np.ndarray] = []

    def _temp(self, final: str) -> IO[bytes]:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.tmp",
                                   dir=os.path.dirname(os.path.abspath(final)))
        fh = os.fdopen(fd, "wb", buffering=1 << 20)
        self._files.append((fh, tmp))
        return fh

    def append(self, chunk: Chunk, emb: np.ndarray) -> None:
        self.npy.write(np.ascontiguousarray(emb, dtype=self.dtype).tobytes())
        self.side.write(b"".join(dumps_jsonl({"id": i, "lang": lang})
                                 for i, lang in zip(chunk.ids, chunk.langs)))
        self._id_hashes.append(np.fromiter(map(hash, chunk.ids), np.int64, len(chunk.ids)))
        self._id_lines.append(np.asarray(chunk.lines, dtype=np.int64))
        self.rows += len(chunk.ids)
        self.npy.flush()
        self.side.flush()

    def commit(self, input_path) -> None:
        for fh, _ in self._files:
            fh.flush()
        self._check_duplicates(input_path)
        self.npy.seek(0)
        self.npy.write(npy_header(self.dtype, self.rows, self.dim))
        for fh, tmp in self._files:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.chmod(tmp, 0o644)
        (_, npy_tmp), (_, side_tmp) = self._files
        os.replace(side_tmp, self.side_path)
        os.replace(npy_tmp, self.npy_path)
        self._files = []

    def abort(self) -> None:
        for fh, tmp in self._files:
            fh.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._files = []

    def _check_duplicates(self, input_path) -> None:
        if not self._id_hashes:
            return
        hashes = np.concatenate(self._id_hashes)
        order = np.argsort(hashes, kind="stable")
        same = np.flatnonzero(hashes[order[1:]] == hashes[order[:-1]])
        if not len(same):
            return
        pairs = [(int(order[k]), int(order[k + 1])) for k in same]
        wanted = {r for pair in pairs for r in pair}
        ids = {}
        with open(self._files[1][1], "rb") as fh:
            for row, line in enumerate(fh):
                if row in wanted:
                    ids[row] = parse_json_line(line, self.side_path, row + 1)["id"]
        lines = np.concatenate(self._id_lines)
        for first, second in pairs:  # equal hashes: equal ids, barring a hash collision
            if ids[first] == ids[second]:
                raise InputError(f"duplicate id {ids[first]!r} (first on line "
                                 f"{lines[first]})", input_path, int(lines[second]), "id")


# ---------------------------------------------------------------- the whole job

@dataclasses.dataclass
class EncodeSummary:
    rows: int
    dim: int
    tokens: int
    seconds: float
    dtype: str
    output: str
    device: str = "cpu"


def encode_file(model: str, input_path, output: str, kind: str, *, fields: str | None = None,
                template: str | None = None, dtype: str = "auto", device: str = "auto",
                batch_size: int = 256, batch_tokens: int | None = None, chunk_rows: int = 8192,
                shard: str | None = None, output_dtype: str = "float32",
                trust_remote_code: bool = False, progress: bool = True,
                **settings_overrides) -> EncodeSummary:
    """Encode a JSONL file (or ``-``) into ``output`` (.npy) + its ``.ids.jsonl`` sidecar.

    ``batch_tokens`` None = the device's default (:data:`BATCH_TOKENS`).
    ``settings_overrides``: pooling, query_prefix, passage_prefix, max_query_length,
    max_passage_length (None = keep the model's ``hbt_retrieval.json`` / family default).
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}", field="kind")
    if output in (None, STDIO):
        raise InputError("-o must name a .npy file (a sidecar .ids.jsonl is written beside it)",
                         field="output")
    if output_dtype not in OUTPUT_DTYPES:
        raise InputError(f"output dtype must be one of {tuple(OUTPUT_DTYPES)}",
                         field="output-dtype")
    for name, value in (("batch-size", batch_size), ("batch-tokens", batch_tokens),
                        ("chunk-size", chunk_rows)):
        if value is not None and value < 1:
            raise InputError("must be at least 1", field=name)
    recipe = TextRecipe.from_options(kind, fields, template)
    shard_spec = parse_shard(shard)
    check_model_folder(model)
    # Read and check the first chunk before loading the model: a bad file fails in a moment.
    chunks = iter_chunks(input_path, recipe, chunk_rows, shard_spec)
    first_chunk = next(chunks)
    folder = inference_folder(model)
    # before torch is imported: loading the tokenizer and tokenizing the first chunk overlap
    # with that import (0.1-0.2 s of tokenizing for 300 passages)
    worker = start_tokenizer_process(folder.path) if folder.fast_config else None
    first_token_ids = None
    try:
        if folder.fast_config:
            settings = retrieval_settings(folder.path, folder.fast_config["model_type"], model,
                                          settings_overrides)
            _check_position_limit(settings.max_length(kind), folder.fast_config, kind)
            if worker is not None and first_chunk.texts:
                first_token_ids = worker.submit(
                    [settings.prefix(kind) + t for t in first_chunk.texts], True,
                    settings.max_length(kind))
        from .memory import keep_freed_memory

        keep_freed_memory()  # activations reuse freed blocks instead of page-faulting each op
        biencoder = None
        if worker is not None:  # no torch import where the native encoder runs the model
            from .models.native_bert import native_biencoder

            biencoder = native_biencoder(folder.path, folder.fast_config, settings, device,
                                         dtype)
        if biencoder is not None:
            tokenizer, dtype_name, device_name = worker, biencoder.dtype_name, biencoder.device_type
        else:
            biencoder, tokenizer, dtype_name, device_name = _load_torch_biencoder(
                model, folder, worker, device, dtype, trust_remote_code, settings_overrides)
        start = time.perf_counter()
        writer, tokens = _encode_chunks(biencoder, tokenizer, first_chunk, first_token_ids,
                                        chunks, kind, input_path, output, batch_tokens,
                                        batch_size, output_dtype, progress)
        return EncodeSummary(writer.rows, writer.dim, tokens, time.perf_counter() - start,
                             dtype_name, output, device_name)
    finally:
        if worker is not None:
            worker.close()


def _check_position_limit(max_length: int, config: dict, kind: str) -> None:
    """A clear error, before any work, where texts truncated to ``max_length`` tokens would
    overrun the model's position table."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise InputError(f"{max_length} tokens do not fit this model, which has {limit} "
                         f"positions: use at most {limit}", field=f"max-{kind}-length")


def _load_torch_biencoder(model: str, folder, worker, device: str, dtype: str,
                          trust_remote_code: bool, settings_overrides: dict):
    """(biencoder, tokenizer, dtype name, device name) on PyTorch, the model cast and moved."""
    from .models.encoder import load_inference_biencoder, resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    biencoder, tokenizer = load_inference_biencoder(
        model, trust_remote_code=trust_remote_code, folder=folder, tokenizer=worker,
        **settings_overrides)
    prepare_model(biencoder, torch_dtype, torch_device)
    return (biencoder, tokenizer, str(torch_dtype).replace("torch.", ""),
            str(next(biencoder.parameters()).device))


def _encode_chunks(biencoder, tokenizer, first_chunk: Chunk, first_token_ids,
                   chunks: Iterator[Chunk], kind: str, input_path, output: str,
                   batch_tokens: int | None, batch_size: int, output_dtype: str,
                   progress: bool) -> tuple[EmbeddingWriter, int]:
    """:func:`encode_file`'s work once the model is loaded: tokenize (one chunk ahead), embed,
    write; returns the committed writer and the tokens encoded. ``first_token_ids``: None, or
    a future of the tokenizer's output for ``first_chunk``, already submitted."""
    settings = biencoder.settings
    prefix, max_length = settings.prefix(kind), settings.max_length(kind)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenized(chunk: Chunk) -> Chunk:
        if chunk is first_chunk and first_token_ids is not None:
            chunk.token_ids = first_token_ids.result()["input_ids"]
        else:
            chunk.token_ids = tokenize_unpadded(tokenizer, [prefix + t for t in chunk.texts],
                                                max_length)
        return chunk

    bar = _progress_bar(input_path, progress)
    tokens = 0

    def count_tokens(n: int) -> None:
        nonlocal tokens
        tokens += n

    writer = EmbeddingWriter(output, biencoder.config.hidden_size, OUTPUT_DTYPES[output_dtype])
    try:
        for chunk in prefetch(itertools.chain([first_chunk], chunks), tokenized):
            emb = embed_token_ids(biencoder, chunk.token_ids, pad_id, batch_tokens, batch_size,
                                  on_batch=count_tokens)
            _check_finite(emb, chunk, input_path)
            writer.append(chunk, emb)
            bar.update(chunk.input_bytes)
            bar.set_postfix(rows=writer.rows, refresh=False)
        writer.commit(input_path)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return writer, tokens


def _check_finite(emb: np.ndarray, chunk: Chunk, path) -> None:
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"the model gave NaN or inf for id {chunk.ids[row]!r} "
                         "(try --dtype fp32)", path, chunk.lines[row])


def _progress_bar(input_path, enabled: bool):
    from tqdm import tqdm

    total = None
    if input_path != STDIO and not os.fspath(input_path).endswith(".gz"):
        total = os.path.getsize(input_path)
    # disable=None: only on a terminal, so logs and captured stderr hold no bar.
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"encode {display_name(input_path)}",
                file=sys.stderr, disable=None if enabled else True, dynamic_ncols=True)
