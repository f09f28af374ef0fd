"""hbt-encode: order, sidecar, batching independence, shards, settings, fp16, errors, kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cli_contract import CommandContract, jsonl_cases, model_cases
from conftest import ROOT, child_pids, needs_cuda, running, torch_sees_cuda
from tiny_models import FAMILIES, make_tiny_model

from hbt_tools.encoding import (EmbeddingWriter, TextRecipe, encode_file, length_batches,
                                npy_header, parse_shard)
from hbt_tools.io import InputError, load_embeddings

WORDS = ("the river city bank house music school summer light water der die und das ist "
         "el la los una casa le chat est une maison и в не на что 的 是 了 在 人").split()


def make_rows(n, seed=0, langs=("en", "de", "zh")):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(1, 40)))
        rows.append({"id": f"r{i}", "lang": langs[i % len(langs)], "text": " ".join(words),
                     "title": f"title {i % 7}", "context": " ".join(words[::-1])})
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


def reference_embeddings(model, texts, kind, **overrides):
    """One text at a time through transformers' model (no batching, no sorting), fp32."""
    import torch

    from hbt_tools.models.encoder import load_biencoder, tokenize

    biencoder, tokenizer = load_biencoder(model, **overrides)
    biencoder.eval()
    biencoder.packable = False  # transformers' own forward, not hbt-tools' packed one
    s = biencoder.settings
    out = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenize(tokenizer, [s.prefix(kind) + text], s.max_length(kind))
            out.append(biencoder(**batch)[0].float().numpy())
    return np.stack(out)


class TestEncodeCommand(CommandContract):
    command = "hbt-encode"

    @pytest.fixture(autouse=True)
    def _model(self, models_dir):
        self.model = make_tiny_model(models_dir, "xlm-roberta")

    def valid_args(self, tmp_path):
        data = write_jsonl(tmp_path / "q.jsonl", make_rows(20))
        return ["--model", self.model, "--kind", "query", data, "-o", tmp_path / "q.npy"]

    def missing_file_args(self, tmp_path, missing):
        return ["--model", self.model, "--kind", "query", "{MISSING}", "-o", tmp_path / "o.npy"]

    def test_valid_run_writes_rows_in_input_order(self, tmp_path):
        rows = make_rows(50)
        data = write_jsonl(tmp_path / "c.jsonl", rows)
        r = subprocess_cli(["--model", self.model, "--kind", "passage", "--dtype", "fp32",
                            "--chunk-size", "16", data, "-o", tmp_path / "c.npy"])
        assert r.returncode == 0, r.stderr.decode()
        emb, side = load_embeddings(tmp_path / "c.npy")
        assert emb.dtype == np.float32 and emb.shape == (50, 32)
        assert side == [{"id": r["id"], "lang": r["lang"]} for r in rows]
        # default passage text: title + text + context, with the passage prefix
        texts = [f"{r['title']} {r['text']} {r['context']}" for r in rows]
        np.testing.assert_allclose(emb, reference_embeddings(self.model, texts, "passage"),
                                   atol=2e-5)

    def bad_inputs(self, tmp_path):
        out = str(tmp_path / "out.npy")
        args = ["--model", self.model, "--kind", "query", "-o", out]
        ok = write_jsonl(tmp_path / "ok.jsonl", [{"id": "a", "text": "x"}])
        yield from jsonl_cases(tmp_path, "texts", [{"id": "a", "text": "x", "lang": "en"},
                                                   {"id": "b", "text": "y", "lang": "de"}],
                               lambda path: args + [path], required=("text",), id_field="id",
                               lang_field=("lang",))
        yield "empty stdin", args + ["-"], b"\n\n", "<stdin>: empty input"
        yield "non-UTF-8 stdin", args + ["-"], b'{"id": "a", "text": "caf\xe9"}\n', "<stdin>:1"
        bad_id = write_jsonl(tmp_path / "badid.jsonl", [{"id": [1], "text": "x"}])
        yield "mistyped id", args + [bad_id], None, "badid.jsonl:1: field 'id'"
        yield from model_cases(tmp_path, lambda model: ["--model", model, "--kind", "query", ok,
                                                        "-o", out])
        yield "bad shard", args + ["--shard", "3/3", ok], None, "field 'shard'"
        yield "unknown device", args + ["--device", "tpu", ok], None, "field 'device'"
        if not torch_sees_cuda():
            yield "no CUDA here", args + ["--device", "cuda", ok], None, "sees no CUDA device"
        yield "bad template", args + ["--template", "{text.upper}", ok], None, "field 'template'"
        yield "bad fields", args + ["--fields", "text,a b", ok], None, "field 'fields'"
        yield ("stdout output", ["--model", self.model, "--kind", "query", ok, "-o", "-"], None,
               "field 'output'")

    @pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
    def test_killed_run_leaves_no_output(self, tmp_path, sig):
        data = write_jsonl(tmp_path / "big.jsonl", make_rows(20000))
        out = tmp_path / "big.npy"
        env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "bin", "hbt-encode"), "--model", self.model,
             "--kind", "passage", "--chunk-size", "128", data, "-o", out],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        try:
            while time.time() < deadline:  # wait until embeddings are being written
                temps = [f for f in os.listdir(tmp_path) if f.startswith(".big.npy.tmp")]
                if temps and os.path.getsize(tmp_path / temps[0]) > 4 * 128 * 32 * 4:
                    break
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.05)
            else:
                pytest.fail("hbt-encode never started writing")
            workers = child_pids(proc.pid)  # the tokenizer process
            assert workers, "no forked tokenizer process"
        finally:
            proc.send_signal(sig)
            proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(map(running, workers)):
            time.sleep(0.05)
        assert not any(map(running, workers)), "the tokenizer process outlived hbt-encode"
        left = set(os.listdir(tmp_path)) - {"big.jsonl"}
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
            assert not {"big.npy", "big.ids.jsonl"} & left, left  # at most hidden temp files
        else:  # SIGTERM unwinds: temporary files removed too
            assert proc.returncode == 128 + signal.SIGTERM
            assert not left, left


@needs_cuda
def test_cuda_embeddings_match_the_cpu(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "e5")
    data = write_jsonl(tmp_path / "c.jsonl", make_rows(300, seed=3))
    runs = {}
    for name, device, dtype in (("cpu", "cpu", "fp32"), ("cuda", "cuda", "fp32"),
                                ("cuda-bf16", "auto", "auto")):
        summary = encode_file(model, data, str(tmp_path / f"{name}.npy"), "passage",
                              device=device, dtype=dtype, progress=False)
        runs[name] = (summary, load_embeddings(tmp_path / f"{name}.npy"))
    assert runs["cpu"][0].device == "cpu"
    assert runs["cuda"][0].device == runs["cuda-bf16"][0].device == "cuda:0"
    assert runs["cuda-bf16"][0].dtype == "bfloat16"
    assert runs["cuda"][1][1] == runs["cpu"][1][1]  # same ids, same order
    np.testing.assert_allclose(runs["cuda"][1][0], runs["cpu"][1][0], atol=1e-4)
    assert (runs["cuda-bf16"][1][0] * runs["cpu"][1][0]).sum(1).min() > 0.99


def subprocess_cli(args):
    from conftest import run_cli

    return run_cli("hbt-encode", *args)


def invoke(args):
    """The click command in this process (same CLI layer as the console script, no start-up)."""
    from hbt_tools.commands.encode import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_encodes_through_the_cli(family, models_dir, tmp_path):
    model = make_tiny_model(models_dir, family)
    rows = make_rows(12)
    data = write_jsonl(tmp_path / "q.jsonl", rows)
    invoke(["--model", model, "--kind", "query", "--dtype", "fp32", "--batch-size", "5", data,
            "-o", tmp_path / "q.npy"])
    emb, side = load_embeddings(tmp_path / "q.npy")
    assert [s["id"] for s in side] == [r["id"] for r in rows]
    np.testing.assert_allclose(emb, reference_embeddings(model, [r["text"] for r in rows],
                                                         "query"), atol=2e-5)


def test_batching_does_not_change_embeddings(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "bert")
    data = write_jsonl(tmp_path / "c.jsonl", make_rows(120, seed=1))
    outputs = {}
    for name, opts in {"one": dict(batch_size=1, chunk_rows=1),
                       "sorted": dict(batch_size=64, batch_tokens=512, chunk_rows=100),
                       "default": {}}.items():
        encode_file(model, data, str(tmp_path / f"{name}.npy"), "passage", dtype="fp32",
                    progress=False, **opts)
        outputs[name] = load_embeddings(tmp_path / f"{name}.npy")
    for name in ("sorted", "default"):
        np.testing.assert_allclose(outputs[name][0], outputs["one"][0], atol=2e-5)
        assert outputs[name][1] == outputs["one"][1]
    again = str(tmp_path / "again.npy")
    encode_file(model, data, again, "passage", dtype="fp32", progress=False)
    assert np.array_equal(load_embeddings(again)[0], outputs["default"][0])


def test_bf16_close_to_fp32(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "e5")
    data = write_jsonl(tmp_path / "c.jsonl", make_rows(100, seed=2))
    for dtype in ("fp32", "bf16"):
        summary = encode_file(model, data, str(tmp_path / f"{dtype}.npy"), "passage",
                              dtype=dtype, progress=False)
        assert summary.dtype == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    a, b = load_embeddings(tmp_path / "fp32.npy")[0], load_embeddings(tmp_path / "bf16.npy")[0]
    assert (a * b).sum(1).mean() > 0.99


def test_shards_together_equal_the_whole(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "xlm-roberta")
    data = write_jsonl(tmp_path / "c.jsonl", make_rows(53, seed=3))
    encode_file(model, data, str(tmp_path / "all.npy"), "passage", dtype="fp32", progress=False)
    whole, whole_rows = load_embeddings(tmp_path / "all.npy")
    by_id = {}
    for i in range(4):
        out = tmp_path / f"s{i}.npy"
        encode_file(model, data, str(out), "passage", dtype="fp32", shard=f"{i}/4",
                    chunk_rows=5, progress=False)
        emb, rows = load_embeddings(out)
        assert [r["id"] for r in rows] == [f"r{j}" for j in range(i, 53, 4)]
        by_id.update({r["id"]: e for r, e in zip(rows, emb)})
    assert sorted(by_id) == sorted(r["id"] for r in whole_rows)
    np.testing.assert_allclose(np.stack([by_id[r["id"]] for r in whole_rows]), whole, atol=2e-5)


def test_empty_shard_writes_an_empty_array(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "xlm-roberta")
    data = write_jsonl(tmp_path / "c.jsonl", make_rows(2))
    encode_file(model, data, str(tmp_path / "s.npy"), "query", shard="3/4", progress=False)
    assert np.load(tmp_path / "s.npy", allow_pickle=False).shape == (0, 32)
    assert (tmp_path / "s.ids.jsonl").read_bytes() == b""


def test_settings_json_is_honoured_and_flags_override_it(models_dir, tmp_path):
    from hbt_tools.models.settings import RetrievalSettings

    model = make_tiny_model(tmp_path, "xlm-roberta")  # a private copy: we add settings to it
    RetrievalSettings(pooling="cls", query_prefix="Q: ", max_query_length=8).save(model)
    rows = make_rows(20, seed=4)
    texts = [r["text"] for r in rows]
    data = write_jsonl(tmp_path / "q.jsonl", rows)

    # as a console script: the forked tokenizer gets the first chunk before the model loads,
    # so the settings are read a second time for it (they must be the same)
    def encode(*args):
        r = subprocess_cli(["--model", model, "--kind", "query", "--dtype", "fp32", *args, data])
        assert r.returncode == 0, r.stderr.decode()

    encode("-o", tmp_path / "a.npy")
    saved = reference_embeddings(model, texts, "query")
    assert saved.shape == (20, 32)
    np.testing.assert_allclose(load_embeddings(tmp_path / "a.npy")[0], saved, atol=2e-5)
    # the reference really used the file: cls pooling, "Q: ", 8 tokens
    plain = reference_embeddings(model, texts, "query", pooling="mean", query_prefix="query: ",
                                 max_query_length=64)
    assert not np.allclose(saved, plain, atol=1e-3)

    encode("--pooling", "mean", "--query-prefix", "query: ", "--max-length", "64",
           "-o", tmp_path / "b.npy")
    np.testing.assert_allclose(load_embeddings(tmp_path / "b.npy")[0], plain, atol=2e-5)


def test_fields_presets_and_templates(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "xlm-roberta")
    rows = make_rows(10, seed=5)
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    cases = {
        "lareqa": (["--fields", "lareqa"], [f"{r['text']} {r['context']}" for r in rows]),
        "sentence": (["--fields", "sentence"], [r["text"] for r in rows]),
        "template": (["--template", "{title}: {text}"], [f"{r['title']}: {r['text']}" for r in rows]),
    }
    for name, (opts, texts) in cases.items():
        invoke(["--model", model, "--kind", "passage", "--dtype", "fp32", *opts, data,
                "-o", tmp_path / f"{name}.npy"])
        np.testing.assert_allclose(load_embeddings(tmp_path / f"{name}.npy")[0],
                                   reference_embeddings(model, texts, "passage"), atol=2e-5)


def test_float16_output(models_dir, tmp_path):
    model = make_tiny_model(models_dir, "xlm-roberta")
    data = write_jsonl(tmp_path / "q.jsonl", make_rows(30))
    invoke(["--model", model, "--kind", "query", "--output-dtype", "float16", data,
            "-o", tmp_path / "h.npy"])
    invoke(["--model", model, "--kind", "query", data, "-o", tmp_path / "f.npy"])
    half, full = load_embeddings(tmp_path / "h.npy")[0], load_embeddings(tmp_path / "f.npy")[0]
    assert half.dtype == np.float16 and full.dtype == np.float32
    np.testing.assert_allclose(half.astype(np.float32), full, atol=1e-3)


# ---------------------------------------------------------------- library pieces

def test_text_recipe_optional_and_required_fields():
    recipe = TextRecipe.from_options("passage")
    assert recipe.build({"text": "t"}, "f", 1) == "t"
    assert recipe.build({"title": "", "text": "t", "context": "c"}, "f", 1) == "t c"
    with pytest.raises(InputError, match="field 'text': missing"):
        recipe.build({"title": "x"}, "f", 3)
    with pytest.raises(InputError, match="field 'title'"):
        recipe.build({"title": 5, "text": "t"}, "f", 3)
    with pytest.raises(InputError, match="not both"):
        TextRecipe.from_options("query", fields="text", template="{text}")


@pytest.mark.parametrize("spec", ["1", "a/b", "-1/3", "3/3", "0/0", "1/2/3"])
def test_bad_shard_specs(spec):
    with pytest.raises(InputError, match="shard"):
        parse_shard(spec)


def test_length_batches_respect_the_token_budget():
    lengths = [5, 50, 7, 300, 12, 50, 1]
    batches = length_batches(lengths, batch_tokens=100, batch_size=3)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        widths = [lengths[i] for i in b]
        assert widths == sorted(widths, reverse=True) and len(b) <= 3
        assert len(b) == 1 or widths[0] * len(b) <= 100


def test_token_budget_defaults_to_the_devices_and_an_explicit_one_wins(models_dir, tmp_path,
                                                                       monkeypatch):
    import hbt_tools.encoding

    budgets = []
    real = hbt_tools.encoding.length_batches
    monkeypatch.setattr(hbt_tools.encoding, "length_batches",
                        lambda lengths, batch_tokens, batch_size:
                        budgets.append(batch_tokens) or real(lengths, batch_tokens, batch_size))
    model = make_tiny_model(models_dir, "bert")
    data = write_jsonl(tmp_path / "q.jsonl", make_rows(3))
    for extra in ([], ["--batch-tokens", "96"]):
        invoke(["--model", model, "--kind", "query", "--device", "cpu", data,
                "-o", tmp_path / "q.npy", *extra])
    assert budgets == [4096, 96]


def test_a_max_length_beyond_the_position_table_is_refused_up_front(models_dir, tmp_path):
    from hbt_tools.commands.encode import cli

    data = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "text": " ".join(WORDS * 40)}])
    # 300 position rows in the tiny models; XLM-R's positions start at padding_idx + 1 = 2
    for family, limit in (("xlm-roberta", 298), ("bert", 300)):
        model = make_tiny_model(models_dir, family)
        out = tmp_path / f"{family}.npy"
        args = ["--model", model, "--kind", "passage", data, "-o", str(out)]
        refused = CliRunner().invoke(cli, [*args, "--max-length", str(limit + 1)])
        assert refused.exit_code == 2, refused.output
        assert f"do not fit this model, which has {limit} positions" in refused.output
        assert not out.exists()
        done = invoke([*args, "--max-length", str(limit)])
        assert f"{limit} tokens" in done.output, done.output


def test_npy_header_is_read_by_numpy(tmp_path):
    for dtype in (np.float32, np.float16):
        arr = np.arange(24, dtype=dtype).reshape(4, 6)
        path = tmp_path / "a.npy"
        path.write_bytes(npy_header(dtype, 4, 6) + arr.tobytes())
        assert np.array_equal(np.load(path, allow_pickle=False), arr)


def test_writer_abort_leaves_nothing(tmp_path):
    writer = EmbeddingWriter(str(tmp_path / "x.npy"), 4)
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_encode_texts_python_api(models_dir):
    from hbt_tools.encoding import encode_texts, prepare_model
    from hbt_tools.models.encoder import load_biencoder

    model = make_tiny_model(models_dir, "labse")
    texts = [r["text"] for r in make_rows(25, seed=6)]
    biencoder, tokenizer = load_biencoder(model)
    prepare_model(biencoder, __import__("torch").float32)
    emb = encode_texts(biencoder, tokenizer, texts, "query", batch_tokens=64)
    np.testing.assert_allclose(emb, reference_embeddings(model, texts, "query"), atol=2e-5)


def test_quiet_turns_the_progress_bar_off(models_dir, tmp_path, monkeypatch):
    import hbt_tools.encoding

    seen = []
    real = hbt_tools.encoding.encode_file
    monkeypatch.setattr(hbt_tools.encoding, "encode_file",
                        lambda *a, **kw: seen.append(kw["progress"]) or real(*a, **kw))
    model = make_tiny_model(models_dir, "bert")
    data = write_jsonl(tmp_path / "q.jsonl", make_rows(3))
    for extra in ([], ["--quiet"]):
        invoke(["--model", model, "--kind", "query", data, "-o", tmp_path / "q.npy", *extra])
    assert seen == [True, False]
