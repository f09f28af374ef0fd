"""examples/reproduce_paper.sh end to end in its SMOKE mode, on a tiny model and ../shared data:
every phase, every output the report expects, and a rerun that redoes nothing."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, shared_path
from hbt_tools.report import write_report
from tiny_models import make_tiny_model

PAPER = os.path.join(ROOT, "examples", "paper_2408.10536.json")


def run_script(results, model, shared):
    env = dict(os.environ, SMOKE="1", MODEL=model, SHARED=shared, RESULTS=str(results),
               PYTHONPATH=ROOT, PATH=os.pathsep.join(  # bin/hbt-*, run by this interpreter
                   [os.path.join(ROOT, "bin"), os.path.dirname(sys.executable), os.environ["PATH"]]))
    return subprocess.run(["bash", os.path.join(ROOT, "examples", "reproduce_paper.sh")],
                          capture_output=True, text=True, env=env, timeout=1200)


@pytest.mark.slow
def test_smoke_run_produces_every_result_and_resumes(tmp_path):
    shared_path("data", "miracl-mini")  # skips without ../shared
    model = make_tiny_model(tmp_path, "e5")
    results = tmp_path / "results"
    first = run_script(results, model, SHARED)
    assert first.returncode == 0, first.stderr[-3000:]

    missing = write_report(results, PAPER, tmp_path / "docs" / "results.md")
    assert missing == []
    report = (tmp_path / "docs" / "results.md").read_text()
    assert report.startswith("# SMOKE run — not results")
    pooled = json.loads((results / "significance" / "mlqa-r" /
                         "hybrid-s0+1-vs-cross-s0+1.json").read_text())
    assert pooled["pairs"] == 2 and len(pooled["compare"]["a"]) == 2
    for lang in ("de", "sw"):  # MIRACL-mini keeps runs and scores, drops the big files
        scores = json.loads((results / "scores" / "hybrid-s0" / f"miracl-mini.{lang}.json")
                            .read_text())
        assert set(scores["metrics"]) == {"ndcg@10", "p@10", "recall@100"}
        assert not (results / "embeddings" / "hybrid-s0" / f"miracl-mini.{lang}.index").exists()
    steps = [json.loads(line)["step"] for line in
             (results / "timings.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps))   # nothing ran twice
    assert {"train-mono-s0", "train-cross-s1", "score-hybrid-s1-mlqa-r",
            "compare-hybrid-s0+1-vs-mono-s0+1-xquad-r", "compare-hybrid-s0+1-vs-cross-s0+1-mlqa-r",
            "search-untrained-miracl-mini-sw"} <= set(steps)

    # everything exists: a second run recomputes nothing
    second = run_script(results, model, SHARED)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len((results / "timings.jsonl").read_text().splitlines()) == len(steps)
    assert "== train" not in second.stderr and "== evaluate" not in second.stderr
