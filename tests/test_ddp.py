"""Data parallel: 2 processes (torchrun, gloo) end with the same weights as 1 process on the
same global batches (dropout off, fp32), with ranks holding unequal shares of the items.

The remaining differences are float32 rounding (other summation orders), which AdamW turns into
weight differences proportional to the learning rate where a gradient is near 0; at the default
lr they stay around 1e-6."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from batch_factory import make_batches, write_batches
from conftest import ROOT
from tiny_models import make_tiny_model, turn_off_dropout


def test_item_slices_cover_the_batch_contiguously():
    from hbt_tools.training.distributed import item_slice

    for n in (2, 5, 7):
        for world in (1, 2, 3):
            if n < world:
                continue
            slices = [item_slice(n, r, world) for r in range(world)]
            assert [i for s in slices for i in range(n)[s]] == list(range(n))
            assert max(s.stop - s.start for s in slices) - min(s.stop - s.start
                                                               for s in slices) <= 1


def _batches_with_uneven_negatives(n_steps):
    batches = make_batches(n_steps, items=5, negatives=2, seed=11)
    for b in batches:
        b["items"][0]["negatives"] = []          # rank 0 and rank 1 hold different
        b["items"][4]["negatives"].append("x")   # numbers of passages
    return batches


def test_two_processes_equal_one(tmp_path):
    from hbt_tools.commands.train import cli
    from hbt_tools.training.checkpoint import load_trainer_state
    from click.testing import CliRunner

    model = make_tiny_model(tmp_path, "xlm-roberta")
    turn_off_dropout(model)
    batches = write_batches(tmp_path / "b.jsonl", _batches_with_uneven_negatives(4))
    common = ["--model", model, "--dtype", "fp32", "--quiet", batches]  # default lr 3e-5

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = CliRunner().invoke(cli, ["--output", str(tmp_path / "one"), "--save-steps", "0",
                                          *common])
    finally:
        torch.set_num_threads(threads)
    assert single.exit_code == 0, (single.output, single.exception)

    env = dict(os.environ, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # Two ranks, and gradient caching on top: the weights must still match the plain run.
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", os.path.join(ROOT, "bin", "hbt-train"),
                        "--output", str(tmp_path / "two"), "--save-steps", "2",
                        "--chunk-size", "2", *common],
                       env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-3000:]

    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    initial = load_file(os.path.join(model, "model.safetensors"))
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    moved = max(float((one[k] - initial[k]).abs().max()) for k in one)
    print(f"2 processes vs 1: max |weight diff| = {diff:.2e} (weights moved by up to {moved:.2e})")
    assert moved > 3e-5 and diff < 1e-5

    def losses(name):
        with open(tmp_path / name / "train_log.jsonl", encoding="utf-8") as fh:
            return [json.loads(line)["loss"] for line in fh]
    assert losses("two") == pytest.approx(losses("one"), abs=1e-5)
    state = load_trainer_state(str(tmp_path / "two" / "checkpoint-2"))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
