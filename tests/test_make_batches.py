"""hbt-make-batches: batch properties (over generated data), counts, sampling rates, CLI behaviour."""
import collections
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from cli_contract import CommandContract, jsonl_cases
from conftest import ROOT, run_cli
from hbt_tools import batching
from hbt_tools.batching import BatchSampler, count_steps, make_batches, open_datasets
from hbt_tools.io import InputError
from hbt_tools.training.batch_format import check_batch_file

LANGS = ["ar", "de", "en", "zh"]


def pairs_lines(group_langs, prefix="g"):
    """``group_langs[i]`` = languages of group ``prefix+i`` -> ``{(group, lang): line dict}``."""
    lines = {}
    for i, langs in enumerate(group_langs):
        group = f"{prefix}{i}"
        for lang in langs:
            line = {"group": group, "lang": lang, "query": f"q {group} {lang}",
                    "positive": f"p {group} {lang}", "source": "test"}
            if i % 2:
                line["negatives"] = [f"n1 {group} {lang}", f"n2 {group} {lang}"]
            lines[(group, lang)] = line
    return lines


def write_pairs(path, group_langs, prefix="g"):
    lines = pairs_lines(group_langs, prefix)
    # Languages of one group far apart in the file, as hbt-prepare writes them (file per language).
    rows = sorted(lines.values(), key=lambda line: (line["lang"], line["group"]))
    with open(path, "wb") as fh:
        fh.write(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return lines


def parallel(n_groups, langs=LANGS[:3]):
    return [list(langs)] * n_groups


def draw(paths, steps, **options):
    """Batches from the library, each with the pass count of its dataset after it was drawn."""
    with open_datasets([str(p) for p in paths], options.pop("langs", None)) as indexes:
        sampler = BatchSampler(indexes, **options)
        names = [index.path for index in indexes]
        out = []
        for batch in sampler.batches(steps):
            out.append((batch, sampler.passes[names.index(batch["dataset"])]))
        return out, sampler


def check_batch(batch, lines, batch_size, mono_langs=None):
    """Every property one batch must have, whatever the strategy."""
    items = batch["items"]
    assert len(items) == batch_size
    assert len({item["group"] for item in items}) == batch_size, "two items of one group"
    for item in items:
        query_line = lines[(item["group"], item["query_lang"])]
        positive_line = lines[(item["group"], item["positive_lang"])]
        assert item["query"] == query_line["query"]
        assert item["positive"] == positive_line["positive"]
        assert item["negatives"] == positive_line.get("negatives", [])
    query_langs = {item["query_lang"] for item in items}
    if batch["kind"] == "mono":
        assert all(item["query_lang"] == item["positive_lang"] for item in items)
        assert len(query_langs) == 1
        if mono_langs is not None:
            assert query_langs <= set(mono_langs)
    elif batch["kind"] == "cross":
        assert all(item["query_lang"] != item["positive_lang"] for item in items)
    else:
        assert batch["kind"] == "mixed"
        assert all(item["query_lang"] == item["positive_lang"] for item in items)


# ---------------------------------------------------------------- properties over generated data

@settings(max_examples=60, deadline=None)
@given(group_langs=st.lists(st.lists(st.sampled_from(LANGS), min_size=1, max_size=4, unique=True),
                            min_size=1, max_size=25),
       strategy=st.sampled_from(["hybrid", "mono", "cross", "mixed"]),
       alpha=st.sampled_from([0.0, 0.3, 1.0]), batch_size=st.integers(1, 6),
       steps=st.integers(1, 25), seed=st.integers(0, 2**32))
def test_every_batch_has_the_defining_properties(group_langs, strategy, alpha, batch_size, steps, seed):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pairs.jsonl")
        lines = write_pairs(path, group_langs)
        groups_per_lang = collections.Counter(lang for langs in group_langs for lang in langs)
        mono_langs = [lang for lang, n in groups_per_lang.items() if n >= batch_size]
        n_multilingual = sum(len(langs) >= 2 for langs in group_langs)
        needs_mono = strategy == "mono" or (strategy == "hybrid" and alpha > 0)
        needs_cross = strategy == "cross" or (strategy == "hybrid" and alpha < 1)
        feasible = (len(group_langs) >= batch_size and (not needs_mono or mono_langs)
                    and (not needs_cross or n_multilingual >= batch_size))
        if not feasible:
            with pytest.raises(InputError):
                draw([path], steps, strategy=strategy, alpha=alpha, batch_size=batch_size, seed=seed)
            return
        batches, _ = draw([path], steps, strategy=strategy, alpha=alpha, batch_size=batch_size,
                          seed=seed)
    assert len(batches) == steps
    expected_kinds = {"hybrid": {"mono", "cross"} if 0 < alpha < 1 else {"mono" if alpha else "cross"},
                      "mono": {"mono"}, "cross": {"cross"}, "mixed": {"mixed"}}[strategy]
    used_in_pass, current_pass = set(), 1
    for batch, passes in batches:
        assert batch["kind"] in expected_kinds
        check_batch(batch, lines, batch_size, mono_langs)
        if passes != current_pass:
            used_in_pass, current_pass = set(), passes
        groups = {item["group"] for item in batch["items"]}
        assert not groups & used_in_pass, "a group used twice in one pass"
        used_in_pass |= groups


def test_epochs_use_each_group_once(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = write_pairs(path, parallel(23))
    for strategy in ("hybrid", "mono", "cross", "mixed"):
        with open_datasets([str(path)]) as indexes:
            sampler = BatchSampler(indexes, strategy=strategy, batch_size=5, seed=7)
            steps = count_steps(sampler, None, 2)
            assert steps == 2 * (23 // 5)
            batches = list(sampler.batches(steps))
            assert sampler.passes == [2]
        for epoch in (batches[:4], batches[4:]):
            groups = [item["group"] for batch in epoch for item in batch["items"]]
            assert len(groups) == len(set(groups)) == 20
        for batch in batches:
            check_batch(batch, lines, 5)


def test_epochs_count_over_several_datasets(tmp_path):
    write_pairs(tmp_path / "a.jsonl", parallel(23), prefix="a")
    write_pairs(tmp_path / "b.jsonl", parallel(12), prefix="b")
    r = run_cli("hbt-make-batches", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--batch-size", 5,
                "--epochs", 3, "--seed", 1)
    assert r.returncode == 0, r.stderr.decode()
    batches = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(batches) == 3 * (23 // 5 + 12 // 5)
    assert [b["step"] for b in batches] == list(range(len(batches)))


def test_steps_gives_exactly_that_many_lines(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", parallel(7))
    r = run_cli("hbt-make-batches", tmp_path / "pairs.jsonl", "--batch-size", 3, "--steps", 41)
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout.splitlines()) == 41


def test_mono_uses_only_groups_that_have_the_language(tmp_path):
    # zh: only 2 groups, fewer than the batch size -> never drawn; de: only odd groups.
    group_langs = [["en", "de"] if i % 2 else ["en"] for i in range(20)]
    group_langs[0] = ["en", "zh"]
    group_langs[2] = ["en", "zh"]
    lines = write_pairs(tmp_path / "pairs.jsonl", group_langs)
    batches, sampler = draw([tmp_path / "pairs.jsonl"], 200, strategy="mono", batch_size=4, seed=3)
    assert any("zh (2 groups)" in note for note in sampler.notes)
    langs = collections.Counter(batch["items"][0]["query_lang"] for batch, _ in batches)
    assert set(langs) == {"en", "de"}
    for batch, _ in batches:
        check_batch(batch, lines, 4, ["en", "de"])


def bound(n, p, sigmas=5.0):
    """Half-width of a binomial(n, p) acceptance interval."""
    return sigmas * math.sqrt(n * p * (1 - p))


def test_hybrid_rate_and_uniform_languages(tmp_path):
    lines = write_pairs(tmp_path / "pairs.jsonl", parallel(40))
    n = 3000
    batches, _ = draw([tmp_path / "pairs.jsonl"], n, strategy="hybrid", alpha=0.3, batch_size=4, seed=11)
    kinds = collections.Counter(batch["kind"] for batch, _ in batches)
    assert abs(kinds["mono"] - 0.3 * n) <= bound(n, 0.3), kinds
    mono_langs = collections.Counter(batch["items"][0]["query_lang"]
                                     for batch, _ in batches if batch["kind"] == "mono")
    assert set(mono_langs) == {"ar", "de", "en"}
    for count in mono_langs.values():
        assert abs(count - kinds["mono"] / 3) <= bound(kinds["mono"], 1 / 3), mono_langs
    for batch, _ in batches:
        check_batch(batch, lines, 4)


def test_hybrid_at_alpha_0_and_1_is_exactly_cross_and_mono(tmp_path):
    """reproduce_paper.sh and the report reuse the X-Y / X-X-mono runs for alpha 0 / 1."""
    write_pairs(tmp_path / "pairs.jsonl", parallel(30))
    for alpha, strategy in ((0.0, "cross"), (1.0, "mono")):
        hybrid, _ = draw([tmp_path / "pairs.jsonl"], 50, strategy="hybrid", alpha=alpha,
                         batch_size=4, seed=2)
        plain, _ = draw([tmp_path / "pairs.jsonl"], 50, strategy=strategy, batch_size=4, seed=2)
        assert [b for b, _ in hybrid] == [b for b, _ in plain]
        assert {b["kind"] for b, _ in plain} == {strategy}


def test_cross_pairs_uniform_among_the_group_languages(tmp_path):
    # Groups with 3 languages -> 6 ordered pairs; groups with 2 -> 2 pairs.
    group_langs = [["ar", "de", "en"]] * 10 + [["de", "zh"]] * 10 + [["ar"]] * 5
    lines = write_pairs(tmp_path / "pairs.jsonl", group_langs)
    batches, _ = draw([tmp_path / "pairs.jsonl"], 2000, strategy="cross", batch_size=5, seed=5)
    pairs = collections.Counter()
    for batch, _ in batches:
        check_batch(batch, lines, 5)
        for item in batch["items"]:
            assert item["group"] not in {f"g{i}" for i in range(20, 25)}, "single-language group used"
            pairs[(len(group_langs[int(item["group"][1:])]), item["query_lang"], item["positive_lang"])] += 1
    three = {k: v for k, v in pairs.items() if k[0] == 3}
    two = {k: v for k, v in pairs.items() if k[0] == 2}
    assert len(three) == 6 and len(two) == 2
    for table in (three, two):
        total = sum(table.values())
        for count in table.values():
            assert abs(count - total / len(table)) <= bound(total, 1 / len(table)), table


def test_mixed_mixes_languages_within_batches(tmp_path):
    lines = write_pairs(tmp_path / "pairs.jsonl", parallel(30))
    batches, _ = draw([tmp_path / "pairs.jsonl"], 300, strategy="mixed", batch_size=6, seed=2)
    per_batch = [len({item["query_lang"] for item in batch["items"]}) for batch, _ in batches]
    assert sum(n > 1 for n in per_batch) > 0.9 * len(per_batch)
    langs = collections.Counter(item["query_lang"] for batch, _ in batches for item in batch["items"])
    total = sum(langs.values())
    assert all(abs(c - total / 3) <= bound(total, 1 / 3) for c in langs.values()), langs
    for batch, _ in batches:
        check_batch(batch, lines, 6)


@pytest.mark.parametrize("sampling, temperature, share_a", [
    ("proportional", 1.0, 0.75), ("uniform", 1.0, 0.5), ("temperature", 0.5, math.sqrt(3) / (math.sqrt(3) + 1))])
def test_dataset_sampling(tmp_path, sampling, temperature, share_a):
    lines_a = write_pairs(tmp_path / "a.jsonl", parallel(300, ["de", "en"]), prefix="a")
    lines_b = write_pairs(tmp_path / "b.jsonl", parallel(100, ["de", "en"]), prefix="b")
    n = 2000
    batches, _ = draw([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], n, strategy="hybrid",
                      batch_size=10, seed=4, dataset_sampling=sampling, temperature=temperature)
    from_a = 0
    for batch, _ in batches:
        prefixes = {item["group"][0] for item in batch["items"]}
        assert prefixes == {os.path.basename(batch["dataset"])[0]}, "a batch mixes datasets"
        check_batch(batch, lines_a if batch["dataset"].endswith("a.jsonl") else lines_b, 10)
        from_a += batch["dataset"].endswith("a.jsonl")
    assert abs(from_a - share_a * n) <= bound(n, share_a), from_a


def test_langs_restricts_languages(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", parallel(20, LANGS))
    batches = list(make_batches([str(tmp_path / "pairs.jsonl")], strategy="hybrid", batch_size=5,
                                steps=50, seed=1, langs=["de", "zh"]))
    langs = {item[key] for batch in batches for item in batch["items"]
             for key in ("query_lang", "positive_lang")}
    assert langs == {"de", "zh"}
    assert [batch["step"] for batch in batches] == list(range(50))


# ---------------------------------------------------------------- the command

class TestContract(CommandContract):
    command = "hbt-make-batches"

    def valid_args(self, tmp_path):
        write_pairs(tmp_path / "pairs.jsonl", parallel(10))
        return [tmp_path / "pairs.jsonl", "--batch-size", 4, "--steps", 3, "-o", tmp_path / "b.jsonl"]

    def missing_file_args(self, tmp_path, missing):
        return ["{MISSING}", "--steps", 1]

    def bad_inputs(self, tmp_path):
        good = tmp_path / "good.jsonl"
        write_pairs(good, parallel(10))
        out = ["-o", tmp_path / "out.jsonl"]
        line = orjson.dumps(pairs_lines([["en"]])[("g0", "en")])

        def case(label, content, expected, *options):
            path = tmp_path / f"{label}.jsonl"
            path.write_bytes(content)
            return label, [path, "--steps", 1, "--batch-size", 1, *options, *out], None, expected

        yield from jsonl_cases(tmp_path, "pairs", list(pairs_lines([["en"], ["de"]]).values()),
                               lambda path: [path, "--steps", 1, "--batch-size", 1, *out],
                               required=("query",), id_field="group", duplicate_field="lang",
                               lang_field=("lang",))
        yield case("mistyped-negatives", line[:-1] + b', "negatives": ["a", 3]}\n',
                   "mistyped-negatives.jsonl:1: field 'negatives': item 1")
        yield case("empty-text", b'{"group": "g1", "lang": "en", "query": "", "positive": "p"}\n',
                   "empty-text.jsonl:1: field 'query': empty")
        yield case("no-cross-pairs", line + b"\n", "no cross-lingual pairs available",
                   "--strategy", "cross")
        yield "unknown-strategy", [good, "--strategy", "multi", "--steps", 1, *out], None, "'--strategy'"
        yield "alpha-above-1", [good, "--alpha", "1.5", "--steps", 1, *out], None, "'--alpha'"
        yield "alpha-below-0", [good, "--alpha", "-0.1", "--steps", 1, *out], None, "'--alpha'"
        yield ("batch-too-large", [good, "--batch-size", 11, "--steps", 1, *out], None,
               "--batch-size 11 is larger than the number of groups (10)")
        yield "no-count", [good, *out], None, "exactly one of --steps N or --epochs E"
        yield "both-counts", [good, "--steps", 1, "--epochs", 1, *out], None, "exactly one of"
        yield "unknown-langs", [good, "--langs", "de,xx", "--steps", 1, *out], None, "xx"
        yield ("temperature-without-sampling", [good, "--temperature", 2, "--steps", 1, *out], None,
               "--dataset-sampling temperature")


def test_same_seed_same_bytes(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", [LANGS[: 1 + i % 4] for i in range(40)])
    args = [tmp_path / "pairs.jsonl", "--batch-size", 5, "--steps", 30, "--strategy", "hybrid"]
    first = run_cli("hbt-make-batches", *args, "--seed", 9)
    second = run_cli("hbt-make-batches", *args, "--seed", 9, "-o", tmp_path / "b.jsonl")
    other = run_cli("hbt-make-batches", *args, "--seed", 10)
    assert first.returncode == second.returncode == other.returncode == 0, first.stderr.decode()
    assert first.stdout == (tmp_path / "b.jsonl").read_bytes()
    assert first.stdout != other.stdout
    assert check_batch_file(str(tmp_path / "b.jsonl")) == 30  # what hbt-train reads


def test_reads_stdin_and_gzip(tmp_path):
    import gzip

    write_pairs(tmp_path / "pairs.jsonl", parallel(10))
    data = (tmp_path / "pairs.jsonl").read_bytes()
    (tmp_path / "pairs.jsonl.gz").write_bytes(gzip.compress(data))
    args = ["--batch-size", 4, "--steps", 5, "--seed", 3]
    from_file = run_cli("hbt-make-batches", tmp_path / "pairs.jsonl", *args)
    from_stdin = run_cli("hbt-make-batches", "-", *args, input=data)
    from_gzip = run_cli("hbt-make-batches", tmp_path / "pairs.jsonl.gz", *args)
    assert from_file.returncode == from_stdin.returncode == from_gzip.returncode == 0
    strip = [{k: v for k, v in orjson.loads(line).items() if k != "dataset"}
             for line in from_file.stdout.splitlines()]
    for other in (from_stdin, from_gzip):
        assert strip == [{k: v for k, v in orjson.loads(line).items() if k != "dataset"}
                         for line in other.stdout.splitlines()]


def test_head_ends_quietly(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", parallel(50))
    script = (f"set -o pipefail; {sys.executable} {ROOT}/bin/hbt-make-batches {tmp_path}/pairs.jsonl "
              f"--batch-size 10 --steps 200000 | head -n 1")
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    assert orjson.loads(r.stdout)["step"] == 0


def test_kill_leaves_no_truncated_output(tmp_path):
    write_pairs(tmp_path / "pairs.jsonl", parallel(50))
    final = tmp_path / "batches.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "hbt-make-batches"),
                             tmp_path / "pairs.jsonl", "--batch-size", "10", "--steps", str(10**8),
                             "-o", final], env=dict(os.environ, PYTHONPATH=ROOT),
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until it has written part of the output
            partial = [p for p in tmp_path.iterdir() if p.name.startswith(".batches.jsonl.tmp")]
            if partial and partial[0].stat().st_size > 100_000:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no partial output appeared")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()


@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_index_is_the_same_in_one_or_several_processes(tmp_path, monkeypatch, block_bytes):
    group_langs = [LANGS[: 1 + i % 4] for i in range(300)]
    write_pairs(tmp_path / "pairs.jsonl", group_langs)
    with (tmp_path / "pairs.jsonl").open("ab") as fh:  # blank lines and a last line without newline
        fh.write(b"\n  \n" + orjson.dumps({"group": "last", "lang": "en", "query": "q", "positive": "p"}))
    monkeypatch.setattr(batching, "BLOCK_BYTES", block_bytes)
    one = batching.index_pairs(str(tmp_path / "pairs.jsonl"))
    monkeypatch.setattr(batching, "RANGE_MIN_BYTES", 1024)
    several = batching.index_pairs(str(tmp_path / "pairs.jsonl"))
    assert batching._worker_count(os.path.getsize(tmp_path / "pairs.jsonl")) > 1
    for name in ("line_offset", "line_length", "line_number", "line_lang", "group_start"):
        assert (getattr(one, name) == getattr(several, name)).all(), name
    assert one.langs == several.langs == LANGS
    assert one.n_groups == 301 and one.n_lines == sum(map(len, group_langs)) + 1
    assert one.read_rows(np.array([one.n_lines - 1]))[0]["group"] == "last"
    # A bad line far into the file is reported with its line number in the whole file.
    lines = (tmp_path / "pairs.jsonl").read_bytes().split(b"\n")
    lines[-5] = b"{oops"
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(InputError) as error:
        batching.index_pairs(str(tmp_path / "bad.jsonl"))
    assert error.value.line == len(lines) - 4
    one.close()
    several.close()
