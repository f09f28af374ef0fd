"""hbt-encode's torch-free encoder (native_bert.cpp) against the PyTorch path it replaces: the
same embeddings bit for bit, taken exactly where it applies, and no torch import."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT
from tiny_models import make_tokenizer, texts

from hbt_tools.encoding import embed_token_ids, encode_file, prepare_model, tokenize_unpadded
from hbt_tools.io import InputError
from hbt_tools.models import native_bert
from hbt_tools.models.encoder import load_inference_biencoder
from hbt_tools.models.fast_tokenizer import FastTokenizer
from hbt_tools.models.settings import RetrievalSettings

needs_native = pytest.mark.skipif(native_bert.load_kernel() is None,
                                  reason="needs AMX, C and C++ compilers and torch's headers")


def wide_head_model(root, family: str, dtype=torch.float32, prefix: str = "") -> str:
    """A random 2-layer model with 32-wide heads (the kernels' smallest), with the tiny
    tokenizer, its weights saved in ``dtype`` under ``prefix``."""
    import transformers as tf

    path = os.path.join(str(root), f"wide-{family}-{str(dtype)[6:]}{prefix.strip('.')}")
    tokenizer = make_tokenizer()
    shape = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=64,
                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 max_position_embeddings=300)
    config = tf.XLMRobertaConfig(**shape) if family == "xlm-roberta" else tf.BertConfig(**shape)
    torch.manual_seed(0)
    model = tf.AutoModel.from_config(config)
    with torch.no_grad():  # position and type rows that matter: BERT starts them at zero
        for name, weight in model.named_parameters():
            weight.normal_(0, 0.5 if "embeddings" in name else 0.1)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    weights = load_file(os.path.join(path, "model.safetensors"))
    save_file({prefix + name: w.to(dtype) if w.is_floating_point() else w
               for name, w in weights.items()}, os.path.join(path, "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("wide")
    return {"xlm-roberta": wide_head_model(root, "xlm-roberta"),
            "bert": wide_head_model(root, "bert"),
            "bert-bf16": wide_head_model(root, "bert", torch.bfloat16),
            "bert-prefixed": wide_head_model(root, "bert", prefix="bert.")}


def config_of(folder) -> dict:
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
        return json.load(fh)


def torch_path_embeddings(folder, settings: RetrievalSettings, token_ids, pad_id):
    biencoder, _ = load_inference_biencoder(folder, pooling=settings.pooling)
    biencoder.settings = settings
    prepare_model(biencoder, torch.bfloat16)
    return embed_token_ids(biencoder, token_ids, pad_id, 300, 256)


@needs_native
@pytest.mark.parametrize("name", ["xlm-roberta", "bert", "bert-bf16", "bert-prefixed"])
@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", True), ("mean", False)])
def test_same_embeddings_bit_for_bit_as_the_torch_path(models, name, pooling, normalize):
    folder = models[name]
    tokenizer = FastTokenizer(folder)
    token_ids = tokenize_unpadded(tokenizer, texts(), 200)
    assert len({len(ids) for ids in token_ids}) > 10  # padding in most batches
    settings = RetrievalSettings(pooling=pooling, normalize=normalize)
    native = native_bert.native_biencoder(folder, config_of(folder), settings, "cpu", "auto")
    assert native is not None
    # a 300-token budget: many batches, most of them padded
    got = embed_token_ids(native, token_ids, tokenizer.pad_token_id, 300, 256)
    want = torch_path_embeddings(folder, settings, token_ids, tokenizer.pad_token_id)
    assert np.array_equal(got, want)
    assert np.abs(want).max() > 0.01 and np.unique(want, axis=0).shape[0] == len(token_ids)


@needs_native
def test_taken_exactly_where_it_applies(models):
    config = config_of(models["bert"])
    mean = RetrievalSettings(pooling="mean")
    assert native_bert.applies(config, mean, "cpu", "auto")
    assert native_bert.applies(config, mean, "cpu", "bf16")
    assert native_bert.applies(config, mean, "auto", "auto") != native_bert.torch_has_cuda()
    assert not native_bert.applies(config, mean, "cpu", "fp32")
    assert not native_bert.applies(config, mean, "cuda", "auto")
    assert not native_bert.applies(config, RetrievalSettings(pooling="pooler"), "cpu", "auto")
    narrow = dict(config, num_attention_heads=4)  # 16-wide heads: no attention kernel
    assert not native_bert.applies(narrow, mean, "cpu", "auto")
    assert native_bert.native_biencoder(models["bert"], narrow, mean, "cpu", "auto") is None


@needs_native
def test_missing_and_broken_weights_fail_as_the_torch_path_does(models, tmp_path):
    folder = shutil.copytree(models["bert"], tmp_path / "missing")
    weights = load_file(str(folder / "model.safetensors"))
    del weights["encoder.layer.1.output.dense.bias"]
    save_file(weights, str(folder / "model.safetensors"))
    settings = RetrievalSettings()
    with pytest.raises(InputError, match="'encoder.layer.1.output.dense.bias' missing"):
        native_bert.native_biencoder(str(folder), config_of(folder), settings, "cpu", "auto")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InputError, match="cannot load a model from here"):
        native_bert.native_biencoder(str(folder), config_of(folder), settings, "cpu", "auto")


@needs_native
def test_hbt_encode_runs_it_without_importing_torch(models, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                            for i, t in enumerate(texts())))
    folder = models["xlm-roberta"]
    # a fresh process: hbt-encode's start (no torch loaded yet, tokenizer forked)
    script = ("import sys\nfrom hbt_tools.encoding import encode_file\n"
              f"s = encode_file({folder!r}, {str(rows)!r}, {str(tmp_path / 'native.npy')!r}, "
              "'passage', progress=False, batch_tokens=300, device='cpu')\n"
              "print(s.dtype, s.device, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    assert out.stdout.split() == ["bfloat16", "cpu", "False"], out.stderr[-2000:]
    # this process has torch loaded, so encode_file takes the PyTorch path
    summary = encode_file(folder, str(rows), str(tmp_path / "torch.npy"), "passage",
                          progress=False, batch_tokens=300, device="cpu")
    assert summary.dtype == "bfloat16"
    assert np.array_equal(np.load(tmp_path / "native.npy"), np.load(tmp_path / "torch.npy"))


@needs_native
def test_an_error_inside_comes_back_as_one_line(models):
    folder = models["bert"]
    native = native_bert.native_biencoder(folder, config_of(folder), RetrievalSettings(), "cpu",
                                          "auto")
    ids = np.array([[2, 10**6, 3]], dtype=np.int64)  # a token id past the vocabulary
    with pytest.raises(RuntimeError, match="native encoder: index out of range") as raised:
        native.embed_arrays(ids, np.ones_like(ids))
    assert "frame #" not in str(raised.value) and len(str(raised.value)) < 200
