"""hbt-encode's transformers-free encoder against transformers itself (the reference)."""
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT
from tiny_models import make_tiny_model, padded, texts

from hbt_tools.models.encoder import BiEncoder, load_biencoder, load_inference_biencoder, pool
from hbt_tools.models.fast_encoder import FastBertEncoder, onednn_bf16_linear
from hbt_tools.models.fast_tokenizer import FastTokenizer
from hbt_tools.models.folder import fast_path_config
from hbt_tools.models.settings import RetrievalSettings

FAST_FAMILIES = ("xlm-roberta", "bert", "labse", "e5")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {family: make_tiny_model(root, family) for family in FAST_FAMILIES + ("mbart", "mt5")}


@pytest.mark.parametrize("family", FAST_FAMILIES)
def test_same_tokens_and_hidden_states_as_transformers(models, family):
    reference, reference_tokenizer = load_biencoder(models[family])
    fast, fast_tokenizer = load_inference_biencoder(models[family])
    assert isinstance(fast.model, FastBertEncoder) and isinstance(fast_tokenizer, FastTokenizer)
    assert fast.settings == reference.settings
    assert fast_tokenizer.pad_token_id == reference_tokenizer.pad_token_id
    for max_length in (5, 16, 200):
        expected = reference_tokenizer(texts(), truncation=True, max_length=max_length)
        got = fast_tokenizer(texts(), truncation=True, max_length=max_length)
        assert got["input_ids"] == expected["input_ids"], max_length
    assert max(map(len, got["input_ids"])) > 40  # the long text really is long

    ids, mask = padded(got["input_ids"], fast_tokenizer.pad_token_id)
    reference.eval()
    with torch.no_grad():
        want = reference.model(input_ids=ids, attention_mask=mask)
        have = fast.model(input_ids=ids, attention_mask=mask)
        real = mask.bool()
        assert torch.allclose(have.last_hidden_state[real], want.last_hidden_state[real],
                              atol=1e-5)
        assert torch.allclose(have.pooler_output, want.pooler_output, atol=1e-5)
        assert torch.allclose(fast(ids, mask), reference(ids, mask), atol=1e-5)


def test_weights_saved_under_a_task_head_prefix(models, tmp_path):
    folder = shutil.copytree(models["bert"], tmp_path / "prefixed",
                             ignore=shutil.ignore_patterns("model.safetensors"))
    weights = load_file(os.path.join(models["bert"], "model.safetensors"))
    save_file({f"bert.{k}": v for k, v in weights.items()}, str(folder / "model.safetensors"))
    plain, _ = load_inference_biencoder(models["bert"])
    prefixed, _ = load_inference_biencoder(str(folder))
    ids = torch.tensor([[2, 50, 60, 3]])
    mask = torch.ones_like(ids)
    assert torch.equal(plain(ids, mask), prefixed(ids, mask))


def test_cast_to_bf16_equals_an_encoder_built_from_bf16_weights(models):
    """.to(bf16) leaves the word-embedding table as stored and casts the looked-up rows: the
    output must equal that of an encoder whose every weight was bf16 from the start."""
    config = fast_path_config(models["xlm-roberta"])
    weights = load_file(os.path.join(models["xlm-roberta"], "model.safetensors"))
    cast = FastBertEncoder(config, weights).to(torch.bfloat16)
    built = FastBertEncoder(config, {k: v.to(torch.bfloat16) for k, v in weights.items()})
    assert cast.word_embeddings.dtype == torch.float32
    ids, mask = padded([[0, 50, 60, 70, 2], [0, 80, 2]], config["pad_token_id"])
    with torch.no_grad():
        have, want = cast(ids, mask).last_hidden_state, built(ids, mask).last_hidden_state
    assert have.dtype == torch.bfloat16 and torch.equal(have, want)
    assert cast.to(torch.float32)(ids, mask).last_hidden_state.dtype == torch.float32


@pytest.mark.skipif(not onednn_bf16_linear(), reason="oneDNN has no bf16 linear on this CPU")
def test_bf16_linear_layers_fuse_bias_and_gelu(models):
    """In bf16 the linear layers run as oneDNN matmuls with the bias (and GELU) fused: a
    bias-only layer must equal F.linear bit for bit, and GELU on the fp32 accumulator must be
    at least as close to the fp32 result as F.gelu on the rounded bf16 output."""
    config = fast_path_config(models["bert"])
    encoder = FastBertEncoder(config, load_file(os.path.join(models["bert"], "model.safetensors")))
    encoder.to(torch.bfloat16)
    x = torch.randn(3, 7, config["hidden_size"], generator=torch.Generator().manual_seed(0))
    x = x.to(torch.bfloat16)
    layer = "encoder.layer.0.intermediate.dense"
    weight, bias = encoder.w(f"{layer}.weight"), encoder.w(f"{layer}.bias")
    assert torch.equal(encoder._linear(x, layer), torch.nn.functional.linear(x, weight, bias))
    exact = torch.nn.functional.gelu(torch.nn.functional.linear(x.float(), weight.float(),
                                                                bias.float()))
    fused = encoder._linear(x, layer, "gelu")
    unfused = torch.nn.functional.gelu(torch.nn.functional.linear(x, weight, bias))
    assert fused.dtype == torch.bfloat16 and not torch.equal(fused, unfused)
    assert (fused.float() - exact).abs().max() <= (unfused.float() - exact).abs().max()
    assert (fused.float() - exact).abs().mean() < (unfused.float() - exact).abs().mean()


def test_mean_pooling_of_bf16_states_is_not_rounded_to_bf16():
    hidden = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    got = pool(SimpleNamespace(last_hidden_state=hidden), mask, "mean")
    want = (hidden.double() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=0)
    assert not torch.allclose(want.to(torch.bfloat16).double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", ["mbart", "mt5"])
def test_other_families_go_through_transformers(models, family):
    assert fast_path_config(models[family]) is None
    biencoder, _ = load_inference_biencoder(models[family])
    assert isinstance(biencoder, BiEncoder) and not isinstance(biencoder.model, FastBertEncoder)


def test_remote_code_and_unusual_configs_go_through_transformers(models, tmp_path):
    with open(os.path.join(models["bert"], "config.json")) as fh:
        config = json.load(fh)
    for change in ({"auto_map": {"AutoModel": "x.Model"}}, {"hidden_act": "relu"},
                   {"position_embedding_type": "relative_key"}, {"is_decoder": True}):
        folder = shutil.copytree(models["bert"], tmp_path / list(change)[0])
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        assert fast_path_config(str(folder)) is None, change


def test_encoding_never_imports_transformers(models, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                            for i, t in enumerate(texts())))
    script = ("import sys\nfrom hbt_tools.encoding import encode_file\n"
              f"encode_file({models['xlm-roberta']!r}, {str(rows)!r}, "
              f"{str(tmp_path / 'out.npy')!r}, 'passage', progress=False)\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    assert out.stdout.strip() == "[]", out.stdout[:500]
    assert (tmp_path / "out.npy").stat().st_size > 0


def hub_cache_with(root, repo: str, folder: str, leave_out: str = "") -> None:
    """``folder``'s files as the Hugging Face cache stores a download of ``repo`` at main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, storage / "snapshots" / commit, ignore=shutil.ignore_patterns(
        leave_out) if leave_out else None)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)


# Loads a hub name (argv[2]) with encoder.load_inference_biencoder or load_biencoder (argv[1]);
# prints the encoder class, the pooling, whether transformers was imported and how many files
# were asked of the hub one by one (hub_file) after the snapshot.
LOAD_BY_HUB_NAME = """
import sys
from hbt_tools.models import encoder, folder
asked = []
def hub_file(name, file, _real=folder.hub_file):
    asked.append(file)
    return _real(name, file)
folder.hub_file = hub_file
biencoder, _ = getattr(encoder, sys.argv[1])(sys.argv[2])
print(type(biencoder.model).__name__, biencoder.settings.pooling,
      any(m.split(".")[0] == "transformers" for m in sys.modules), len(asked))
"""


def test_hub_models_run_on_the_fast_encoder_too(models, tmp_path):
    hub = tmp_path / "hub"
    hub_cache_with(hub, "someone/tiny-e5", models["e5"])
    # a model hbt-train wrote and someone uploaded: its retrieval settings come with it
    trained = shutil.copytree(models["e5"], tmp_path / "trained")
    RetrievalSettings(pooling="cls").save(str(trained))
    hub_cache_with(hub, "someone/trained-e5", str(trained))
    # weights only as pytorch_model.bin (older repositories): transformers loads them
    bin_only = shutil.copytree(models["xlm-roberta"], tmp_path / "bin-only")
    torch.save(load_file(bin_only / "model.safetensors"), bin_only / "pytorch_model.bin")
    hub_cache_with(hub, "someone/tiny-xlmr", str(bin_only), leave_out="model.safetensors")
    # a complete snapshot of a family the fast encoder does not run: settings from the snapshot
    trained_mbart = shutil.copytree(models["mbart"], tmp_path / "trained-mbart")
    RetrievalSettings(pooling="cls").save(str(trained_mbart))  # mBART's default: mean
    hub_cache_with(hub, "someone/trained-mbart", str(trained_mbart))

    def load(name: str, loader: str = "load_inference_biencoder") -> list[str]:
        env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
        return subprocess.run([sys.executable, "-c", LOAD_BY_HUB_NAME, loader, name],
                              check=True, capture_output=True, text=True, env=env,
                              cwd=ROOT).stdout.split()

    # mE5 told apart by the hub name (mean pooling), as for a folder
    assert load("someone/tiny-e5") == ["FastBertEncoder", "mean", "False", "0"]
    assert load("someone/trained-e5") == ["FastBertEncoder", "cls", "False", "0"]
    assert load("someone/trained-e5", "load_biencoder") == ["BertModel", "cls", "True", "1"]
    assert load("someone/tiny-xlmr") == ["XLMRobertaModel", "mean", "True", "0"]
    assert load("someone/trained-mbart")[1:] == ["cls", "True", "0"]


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from hbt_tools.io import InputError
    from hbt_tools.models.folder import check_model_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("./model", "../model", "/no/such", "~/model", "a/b/c"):
        with pytest.raises(InputError, match=r"\(no such folder\)"):
            check_model_folder(name)
    with pytest.raises(InputError, match="no such folder; runs/ is a local folder"):
        check_model_folder("runs/hybird")
    for hub_name in ("intfloat/multilingual-e5-small", "xlm-roberta-base", "other/hybird"):
        check_model_folder(hub_name)  # left to the hub


@pytest.mark.slow
def test_real_model_embeddings_equal_transformers():
    """The built-in multilingual-e5-small on XQuAD-R text in 11 languages, fp32."""
    from test_offline_model import xquad_texts

    from hbt_tools.encoding import embed_token_ids, tokenize_unpadded

    sample = ["passage: " + t for t in xquad_texts(per_language=8)]
    embeddings = []
    for load in (load_biencoder, load_inference_biencoder):
        biencoder, tokenizer = load("multilingual-e5-small")
        token_ids = tokenize_unpadded(tokenizer, sample, 512)
        embeddings.append(embed_token_ids(biencoder.eval(), token_ids, tokenizer.pad_token_id,
                                          4096, 64))
    assert len(sample) > 60
    assert abs(embeddings[0] - embeddings[1]).max() < 1e-5
