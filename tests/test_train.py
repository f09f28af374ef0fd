"""hbt-train: CLI contract, logs, resume (after a clean stop and after kill -9), families,
validation-based best model, bf16."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from batch_factory import make_batches, write_batches
from cli_contract import CommandContract, jsonl_cases, model_cases
from conftest import ROOT, needs_cuda, run_cli, torch_sees_cuda
from tiny_models import FAMILIES, make_tiny_model, turn_off_dropout

MODELS = {}  # family -> tiny model folder, made once per session


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_model_dir(tmp_path_factory):
    """Tiny models run fastest on one thread (and the test machine's cores are shared)."""
    MODELS["dir"] = tmp_path_factory.mktemp("tiny-models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses
        yield
    torch.set_num_threads(threads)


def tiny(family="xlm-roberta"):
    if family not in MODELS:
        MODELS[family] = make_tiny_model(MODELS["dir"], family)
    return MODELS[family]


def train_in_process(*args, input=None, exit_code=0):
    """Run the hbt-train click command in this process (no interpreter start-up)."""
    from hbt_tools.commands.train import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert result.exit_code == exit_code, (result.output, result.exception)
    return result


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def max_weight_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def read_log(out):
    with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


class TestContract(CommandContract):
    command = "hbt-train"

    def valid_args(self, tmp_path):
        batches = write_batches(tmp_path / "b.jsonl", make_batches(2, items=3))
        return ["--model", tiny(), "--output", tmp_path / "out", "--quiet", batches]

    def missing_file_args(self, tmp_path, missing):
        return ["--model", tiny(), "--output", tmp_path / "out", "{MISSING}"]

    def bad_inputs(self, tmp_path):
        good = json.dumps(make_batches(1, items=2)[0])
        out = tmp_path / "out"
        rows = make_batches(2, items=2)
        batches = tmp_path.parent / f"{tmp_path.name}-good.jsonl"
        batches.write_text(good + "\n", encoding="utf-8")
        for name, reads in (("batches", lambda path: [path]),
                            ("validation", lambda path: ["--validation", path, batches])):
            yield from jsonl_cases(tmp_path, name, rows,
                                   lambda path: ["--model", tiny(), "--output", out, "--quiet",
                                                 *reads(path)],
                                   required=("items", 0, "query"),
                                   lang_field=("items", 1, "positive_lang"))
        negatives = tmp_path.parent / f"{tmp_path.name}-negatives.jsonl"
        negatives.write_text(good.replace('"negatives": [', '"negatives": [3, ', 1) + "\n")
        yield ("mistyped negatives", ["--model", tiny(), "--output", out, "--quiet", negatives],
               None, "negatives.jsonl:1: field 'items[0].negatives'")
        yield from model_cases(tmp_path, lambda model: ["--model", model, "--output", out,
                                                        batches])
        yield ("resume without checkpoint", ["--model", tiny(), "--output", out, "--resume",
                                             batches], None, "no checkpoint")
        yield ("stdin without --max-steps", ["--model", tiny(), "--output", out, "-"],
               (good + "\n").encode(), "--max-steps")
        device_args = ["--model", tiny(), "--output", out, "--quiet", batches, "--device"]
        yield "unknown device", device_args + ["tpu"], None, "field 'device'"
        if not torch_sees_cuda():
            yield "no CUDA here", device_args + ["cuda"], None, "sees no CUDA device"


@needs_cuda
def test_a_numbered_gpu_is_refused_under_torchrun():
    from hbt_tools.io import InputError
    from hbt_tools.training.distributed import rank_device

    assert rank_device("cuda", 0, 1) == rank_device("auto", 0, 1) == torch.device("cuda", 0)
    with pytest.raises(InputError, match="LOCAL_RANK"):
        rank_device("cuda:0", 0, 2)


def test_log_schedule_and_final_model(tmp_path):
    from hbt_tools.models.encoder import load_biencoder

    batches = make_batches(4, items=4, negatives=2)
    path = write_batches(tmp_path / "b.jsonl", batches)
    out = tmp_path / "out"
    train_in_process("--model", tiny(), "--output", out, "--warmup-steps", 2, "--lr", 1e-3,
                     "--pooling", "cls", "--query-prefix", "q: ", "--max-passage-length", 32,
                     "--save-steps", 0, "--device", "cpu", "--quiet", path)
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert [r["kind"] for r in log] == [b["kind"] for b in batches]
    assert [r["lr"] for r in log] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    assert all(r["items"] == 4 and r["seconds"] > 0 and r["loss"] > 0 for r in log)
    assert sorted(os.listdir(out)) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "hbt_retrieval.json", "train_log.jsonl"])
    biencoder, _ = load_biencoder(str(out))
    assert (biencoder.settings.pooling, biencoder.settings.query_prefix,
            biencoder.settings.passage_prefix, biencoder.settings.max_passage_length) == \
        ("cls", "q: ", "passage: ", 32)
    assert max_weight_diff(weights(tiny()), weights(out)) > 1e-4  # it trained


def test_same_seed_saves_the_same_weights_when_the_model_lacks_some(tmp_path):
    """mE5 ships no pooler weights: transformers draws them at load time, from the seed."""
    from safetensors.torch import save_file

    folder = tmp_path / "no-pooler"
    shutil.copytree(tiny("e5"), folder)
    kept = {k: v for k, v in weights(folder).items() if not k.startswith("pooler.")}
    save_file(kept, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    path = write_batches(tmp_path / "b.jsonl", make_batches(1, items=4, negatives=0))
    saved = []
    for run in ("a", "b"):
        train_in_process("--model", folder, "--output", tmp_path / run, "--seed", 3,
                         "--save-steps", 0, "--device", "cpu", "--quiet", path)
        saved.append(weights(tmp_path / run))
    assert any(k.startswith("pooler.") for k in saved[0])
    assert max_weight_diff(*saved) == 0


# ---------------------------------------------------------------- resume

N_STEPS = 12


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory):
    """A batches file and the weights of an uninterrupted fp32 run over it (dropout on)."""
    base = tmp_path_factory.mktemp("resume")
    path = write_batches(base / "b.jsonl", make_batches(N_STEPS, items=4, negatives=1, seed=5))
    out = base / "straight"
    train_in_process("--model", tiny(), "--output", out, "--dtype", "fp32", "--lr", 1e-3,
                     "--warmup-steps", 2, "--save-steps", 0, "--quiet", path)
    return path, out


COMMON = ["--dtype", "fp32", "--lr", 1e-3, "--warmup-steps", 2, "--quiet"]


def test_stop_then_resume_equals_straight_run(resume_setup, tmp_path):
    path, straight = resume_setup
    out = tmp_path / "out"
    with open(path, "rb") as fh:
        head = b"".join(fh.readlines()[:3])
    first = train_in_process("--model", tiny(), "--output", out, "--max-steps", N_STEPS,
                             *COMMON, "-", input=head)
    assert "ended after 3 of 12 steps" in first.stderr
    assert os.path.isdir(out / "checkpoint-3")
    train_in_process("--model", tiny(), "--output", out, "--resume", *COMMON, path)
    diff = max_weight_diff(weights(straight), weights(out))
    print(f"stop at 3 + resume to {N_STEPS} vs straight: max |weight diff| = {diff:.2e}")
    assert diff < 1e-6
    assert [r["loss"] for r in read_log(out)] == \
        pytest.approx([r["loss"] for r in read_log(straight)], abs=1e-6)


def test_kill_9_then_resume_equals_straight_run(resume_setup, tmp_path):
    from hbt_tools.training.checkpoint import checkpoint_dirs, load_trainer_state

    path, straight = resume_setup
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1")
    args = ["--model", tiny(), "--output", out, "--save-steps", 1, *COMMON, path]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "hbt-train"),
                             *map(str, args)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(step >= 2 for step, _ in checkpoint_dirs(out)):
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(out / "config.json")  # no final model, not even half of one
    for _, checkpoint in checkpoint_dirs(out):  # whatever is there is complete
        state = load_trainer_state(checkpoint)
        assert state["lines_consumed"] == state["step"] < N_STEPS
    train_in_process("--model", tiny(), "--output", out, "--resume", *COMMON, path)
    diff = max_weight_diff(weights(straight), weights(out))
    print(f"kill -9 + resume vs straight: max |weight diff| = {diff:.2e}")
    assert diff < 1e-6
    assert [r["step"] for r in read_log(out)] == list(range(1, N_STEPS + 1))
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_bad_line_mid_stream_names_it_and_leaves_no_final_model(tmp_path):
    """A file is checked whole before training; a stream fails when the bad line comes."""
    lines = [json.dumps(b) for b in make_batches(3, items=2)]
    lines[2] = lines[2].replace('"positive":', '"pos":', 1)
    text = "\n".join(lines) + "\n"
    out = tmp_path / "out"
    r = train_in_process("--model", tiny(), "--output", out, "--save-steps", 1, "--quiet",
                         "--max-steps", 3, "-", input=text, exit_code=2)
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "<stdin>:3: field 'items[0].positive': missing" in err
    assert not os.path.exists(out / "config.json")
    assert os.path.isdir(out / "checkpoint-2")  # the steps before the bad line can resume


def test_pipeline_from_make_batches(tmp_path):
    """hbt-make-batches | hbt-train: the real batch format, read from stdin."""
    sentences = [line["positive"] for b in make_batches(4, items=6, seed=9) for line in b["items"]]
    pairs = tmp_path / "pairs.jsonl"
    with open(pairs, "w", encoding="utf-8") as fh:
        for g in range(12):
            for lang in ("de", "en"):
                fh.write(json.dumps({"group": f"g{g}", "lang": lang, "query": f"{lang} {g}?",
                                     "positive": sentences[2 * g]}) + "\n")
    made = run_cli("hbt-make-batches", pairs, "--strategy", "hybrid", "--batch-size", 4,
                   "--steps", 3, "--seed", 0)
    assert made.returncode == 0, made.stderr.decode()
    out = tmp_path / "out"
    train_in_process("--model", tiny(), "--output", out, "--max-steps", 3, "--quiet", "-",
                     input=made.stdout)
    kinds = [json.loads(line)["kind"] for line in made.stdout.decode().splitlines()]
    assert [r["kind"] for r in read_log(out)] == kinds
    assert os.path.isfile(out / "model.safetensors")


# ---------------------------------------------------------------- families, validation, bf16

EXPECTED_POOLING = {"xlm-roberta": "mean", "bert": "cls", "labse": "pooler", "e5": "mean",
                    "mbart": "mean", "mt5": "mean"}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_a_step_and_loads_back(family, tmp_path):
    from hbt_tools.models.encoder import load_biencoder, tokenize

    path = write_batches(tmp_path / "b.jsonl", make_batches(1, items=3))
    out = tmp_path / "out"
    extra = ["--pooling", "pooler"] if family == "labse" else []
    train_in_process("--model", tiny(family), "--output", out, "--lr", 1e-3, "--quiet",
                     *extra, path)
    biencoder, tokenizer = load_biencoder(str(out))
    assert biencoder.settings.pooling == EXPECTED_POOLING[family]
    assert max_weight_diff(weights(tiny(family)), weights(out)) > 0
    tokens = tokenize(tokenizer, ["query: hello", "query: Hallo Welt"], 16)
    with torch.no_grad():
        emb = biencoder.eval()(**tokens)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_validation_keeps_best_model_as_final(tmp_path):
    train = write_batches(tmp_path / "train.jsonl", make_batches(6, items=4, seed=1))
    val = write_batches(tmp_path / "val.jsonl", make_batches(2, items=4, seed=2))
    out = tmp_path / "out"
    train_in_process("--model", tiny(), "--output", out, "--validation", val, "--eval-steps", 2,
                     "--save-steps", 0, "--lr", 5e-3, "--quiet", train)
    rows = [r for r in read_log(out) if "validation_loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    best = min(rows, key=lambda r: r["validation_loss"])
    best_dirs = [n for n in os.listdir(out) if n.startswith("best-")]
    assert best_dirs == [f"best-{best['step']}"]
    with open(out / best_dirs[0] / "best.json", encoding="utf-8") as fh:
        assert json.load(fh)["validation_loss"] == pytest.approx(best["validation_loss"])
    assert max_weight_diff(weights(out / best_dirs[0]), weights(out)) == 0


def test_bf16_autocast_trains_with_fp32_weights(tmp_path):
    path = write_batches(tmp_path / "b.jsonl", make_batches(3, items=4))
    out = tmp_path / "out"
    train_in_process("--model", tiny(), "--output", out, "--dtype", "bf16", "--lr", 1e-3,
                     "--chunk-size", 3, "--quiet", path)
    log = read_log(out)
    assert len(log) == 3 and all(0 < r["loss"] < 100 for r in log)
    saved = weights(out)
    assert all(t.dtype == torch.float32 for t in saved.values())
    assert max_weight_diff(weights(tiny()), saved) > 1e-4


@needs_cuda
def test_cuda_training_follows_the_cpu(tmp_path):
    """Dropout off (its masks differ between devices): transformers' forward (the GPU's),
    GradCache chunks and the optimizer on the GPU give the CPU's (packed) losses and weights in
    fp32; bf16 autocast on the GPU stays near them."""
    model = tmp_path / "no-dropout"
    shutil.copytree(tiny(), model)
    turn_off_dropout(model)
    path = write_batches(tmp_path / "b.jsonl", make_batches(4, items=6, negatives=1))
    runs = {}
    for name, extra in (("cpu", ["--device", "cpu", "--dtype", "fp32"]),
                        ("cuda", ["--device", "cuda", "--dtype", "fp32"]),
                        ("cuda-chunked", ["--device", "cuda", "--dtype", "fp32",
                                          "--chunk-size", 4]),
                        ("cuda-bf16", ["--device", "cuda", "--dtype", "bf16"])):
        out = tmp_path / name
        train_in_process("--model", model, "--output", out, "--lr", 1e-3, "--save-steps", 0,
                         "--quiet", *extra, path)
        runs[name] = ([r["loss"] for r in read_log(out)], weights(out))
    cpu_losses, cpu_weights = runs["cpu"]
    assert max_weight_diff(weights(model), cpu_weights) > 1e-4  # it trained
    # The key biases are left out: their gradient is zero up to rounding (softmax ignores a
    # constant per query), and Adam scales that rounding noise up to steps of +-lr.
    cpu_weights = {k: v for k, v in cpu_weights.items() if not k.endswith("key.bias")}
    for name in ("cuda", "cuda-chunked"):
        assert runs[name][0] == pytest.approx(cpu_losses, rel=1e-4), name
        gpu_weights = {k: v for k, v in runs[name][1].items() if k in cpu_weights}
        assert max_weight_diff(gpu_weights, cpu_weights) < 1e-4, name
    assert runs["cuda-bf16"][0] == pytest.approx(cpu_losses, rel=0.05)
