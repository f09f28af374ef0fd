"""hbt-prepare: LAReQA pools, training pairs, MIRACL; real-data pool sizes; bad input; streaming."""
import gzip
import json
import os
import tracemalloc
from collections import Counter, defaultdict

import pytest

from cli_contract import CommandContract, jsonl_cases, qrels_cases
from conftest import ROOT, run_cli, shared_path
from hbt_tools.data.miracl import iter_corpus, prepare_miracl
from hbt_tools.data.squad import parse_articles, sentence_spans
from hbt_tools.io import InputError


# ---------------------------------------------------------------- helpers

def write_json(path, obj, gz=False):
    data = json.dumps(obj, ensure_ascii=False).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def lareqa_paragraph(sentences, questions):
    """A LAReQA paragraph from sentences and (id, question, answer_text) triples."""
    context = " ".join(sentences)
    breaks, start = [], 0
    for sentence in sentences:
        breaks.append([start, start + len(sentence)])
        start += len(sentence) + 1
    qas = [{"id": qid, "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
           for qid, q, a in questions]
    return {"context": context, "sentence_breaks": breaks, "sentences": sentences, "qas": qas}


def toy_lareqa(directory):
    """Two articles in en and de; q3 only exists in en; de has one sentence more in article 0."""
    en = {"data": [
        {"title": "A", "paragraphs": [lareqa_paragraph(
            ["Paris is big.", "It has a tower.", "The tower is iron."],
            [("q1", "What does Paris have?", "a tower"), ("q3", "What is it made of?", "iron")])]},
        {"title": "B", "paragraphs": [lareqa_paragraph(
            ["Rome is old.", "It has seven hills."], [("q2", "How many hills?", "seven")])]}]}
    de = {"data": [
        {"title": "A", "paragraphs": [lareqa_paragraph(
            ["Paris ist groß.", "Sehr groß.", "Es hat einen Turm.", "Er ist aus Eisen."],
            [("q1", "Was hat Paris?", "einen Turm")])]},
        {"title": "B", "paragraphs": [lareqa_paragraph(
            ["Rom ist alt.", "Es hat sieben Hügel."], [("q2", "Wie viele Hügel?", "sieben")])]}]}
    write_json(directory / "en.json", en)
    write_json(directory / "de.json.gz", de, gz=True)
    return directory


def read_jsonl(path):
    with open(path, "rb") as fh:
        return [json.loads(line) for line in fh]


def read_qrels_file(path):
    qrels = defaultdict(set)
    with open(path) as fh:
        for line in fh:
            qid, iteration, docid, rel = line.split()
            assert iteration == "0"
            if int(rel) >= 1:
                qrels[qid].add(docid)
    return qrels


def prepare(*args):
    r = run_cli("hbt-prepare", *args)
    assert r.returncode == 0, r.stderr.decode()
    return r


# ---------------------------------------------------------------- shared contract

class TestPrepareContract(CommandContract):
    command = "hbt-prepare"

    def valid_args(self, tmp_path):
        return ["lareqa", toy_lareqa(tmp_path / "toy"), "-o", tmp_path / "out"]

    def missing_file_args(self, tmp_path, missing):
        return ["miracl", "--topics", "{MISSING}", "--qrels", "{MISSING}", "--lang", "sw",
                "-o", str(tmp_path / "out")]

    def bad_inputs(self, tmp_path):
        inputs, out = tmp_path / "in", str(tmp_path / "out")
        good = toy_lareqa(inputs / "good")
        en = json.loads((good / "en.json").read_text())

        def lareqa_case(label, name, content, expected, *extra):
            folder = inputs / label
            folder.mkdir(parents=True)
            (folder / name).write_bytes(content)
            return (label, ["lareqa", folder, "-o", out, *extra], None, expected)

        def with_en(change):
            doc = json.loads(json.dumps(en))
            change(doc)
            return json.dumps(doc).encode()

        def drop_context(doc):
            del doc["data"][0]["paragraphs"][0]["context"]

        def string_start(doc):
            doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "3"

        def duplicate_id(doc):
            doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"

        def nul_in_id(doc):
            doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q\x00"

        def break_past_end(doc):
            doc["data"][1]["paragraphs"][0]["sentence_breaks"][1][1] = 999

        yield lareqa_case("json", "en.json", b'{"data": [\n  {"title": ', "en.json:2")
        yield lareqa_case("utf8", "en.json", b'{"data": [{"title": "\xff"}]}', "UTF-8")
        yield lareqa_case("empty", "en.json", b"", "empty file")
        yield lareqa_case("gzip", "en.json.gz", b"not gzip", "gzip")
        yield lareqa_case("context", "en.json", with_en(drop_context),
                          "data[0].paragraphs[0].context': missing")
        yield lareqa_case("start", "en.json", with_en(string_start), "answer_start")
        yield lareqa_case("dup", "en.json", with_en(duplicate_id), "duplicate question id 'q1'")
        yield lareqa_case("breaks", "en.json", with_en(break_past_end), "sentence_breaks[1]")
        yield lareqa_case("NUL id", "en.json", with_en(nul_in_id),
                          "question id 'q\\x00' is empty or holds white space or NUL")
        yield lareqa_case("nojson", "notes.txt", b"hello", "no {lang}.json")
        yield ("articles", ["lareqa", good, "-o", out, "--articles", "1-2"], None, "--articles")
        yield ("no articles", ["lareqa", good, "-o", out, "--articles", "5:"], None,
               "no questions")
        yield ("langs", ["lareqa", good, "-o", out, "--langs", "en,xx"], None, "'xx'")
        yield ("positive", ["pairs", good, "-o", str(tmp_path / "p.jsonl"), "--positive",
                            "title"], None, "--positive")
        yield ("pairs langs", ["pairs", good, "-o", str(tmp_path / "p.jsonl"), "--langs", "fr"],
               None, "'fr'")

        topics = inputs / "topics.tsv"
        topics.write_text("1\tWhat?\n2\tWho?\n")
        qrels = inputs / "qrels.tsv"
        qrels.write_text("1\tQ0\td1\t1\n2\tQ0\td2\t0\n")
        corpus = inputs / "corpus.jsonl"
        corpus.write_text('{"docid": "d1", "title": "T", "text": "x"}\n'
                          '{"docid": "d2", "title": "T", "text": "y"}\n')

        def miracl_case(label, name, content, expected):
            path = inputs / f"{label}-{name}"
            path.write_bytes(content)
            files = {"topics": topics, "qrels": qrels, "corpus": corpus}
            files[name.split(".")[0]] = path
            return (label, ["miracl", "--topics", files["topics"], "--qrels", files["qrels"],
                            "--corpus", files["corpus"], "--lang", "xx", "-o", out], None,
                    expected)

        yield miracl_case("no tab", "topics.tsv", b"1\tWhat?\n2 Who?\n", "topics.tsv:2")
        yield miracl_case("dup topic", "topics.tsv", b"1\tA?\n1\tB?\n", "duplicate query id")
        yield miracl_case("NUL in a query id", "topics.tsv", b"1\x00\tA?\n2\tB?\n",
                          "topics.tsv:1: field 'qid': query id '1\\x00' is empty or holds")
        yield miracl_case("NUL in a docid", "corpus.jsonl",
                          b'{"docid": "d1\\u0000", "title": "T", "text": "x"}\n',
                          "corpus.jsonl:1: field 'docid': docid 'd1\\x00' holds white space or NUL")
        yield miracl_case("qrels qid", "qrels.tsv", b"1 Q0 d1 1\n9 Q0 d2 1\n",
                          "query '9' is judged here but missing from the topics")
        judged_topics = inputs / "judged-topics.tsv"
        judged_topics.write_text("q1\tWhat?\n1\tWho?\n")

        def miracl_args(topics=topics, qrels=qrels, corpus=corpus):
            return ["miracl", "--topics", topics, "--qrels", qrels, "--corpus", corpus,
                    "--lang", "xx", "-o", out]

        yield from qrels_cases(tmp_path, "miracl-qrels",
                               lambda path: miracl_args(topics=judged_topics, qrels=path))
        yield from jsonl_cases(tmp_path, "miracl-corpus",
                               [{"docid": "d1", "title": "T", "text": "x"},
                                {"docid": "d2", "title": "T", "text": "y"}],
                               lambda path: miracl_args(corpus=path), required=("text",),
                               id_field="docid")
        good_lines = b'{"docid": "a", "title": "", "text": "t"}\n' * 2
        yield miracl_case("corpus truncated gz", "corpus.jsonl.gz",
                          gzip.compress(good_lines * 500)[:-20], "gzip")


# ---------------------------------------------------------------- LAReQA pools on toy data

def test_lareqa_ids_and_relevance_across_languages(tmp_path):
    prepare("lareqa", toy_lareqa(tmp_path / "toy"), "-o", tmp_path / "out")
    queries = read_jsonl(tmp_path / "out" / "queries.jsonl")
    corpus = {row["id"]: row for row in read_jsonl(tmp_path / "out" / "corpus.jsonl")}
    qrels = read_qrels_file(tmp_path / "out" / "qrels.trec")

    assert sorted(q["id"] for q in queries) == ["de-q1", "de-q2", "en-q1", "en-q2", "en-q3"]
    assert {q["id"]: q["group"] for q in queries}["de-q1"] == "q1"
    assert len(corpus) == 3 + 2 + 4 + 2  # every sentence of every language
    assert corpus["de-0-0-2"] == {"id": "de-0-0-2", "text": "Es hat einen Turm.", "lang": "de",
                                  "context": "Paris ist groß. Sehr groß. Es hat einen Turm. "
                                             "Er ist aus Eisen."}
    # Same question id in any language is relevant; each language's answer sentence.
    assert qrels["en-q1"] == qrels["de-q1"] == {"en-0-0-1", "de-0-0-2"}
    assert qrels["en-q2"] == qrels["de-q2"] == {"en-1-0-1", "de-1-0-1"}
    assert qrels["en-q3"] == {"en-0-0-2"}  # no German version: one relevant candidate


def test_lareqa_articles_and_langs_select_subsets(tmp_path):
    toy = toy_lareqa(tmp_path / "toy")
    prepare("lareqa", toy, "-o", tmp_path / "held-out", "--articles", "1:")
    corpus_ids = {row["id"] for row in read_jsonl(tmp_path / "held-out" / "corpus.jsonl")}
    assert corpus_ids == {"en-1-0-0", "en-1-0-1", "de-1-0-0", "de-1-0-1"}  # ids keep index 1
    assert {q["group"] for q in read_jsonl(tmp_path / "held-out" / "queries.jsonl")} == {"q2"}

    prepare("lareqa", toy, "-o", tmp_path / "en", "--langs", "en", "--articles", ":-1")
    queries = read_jsonl(tmp_path / "en" / "queries.jsonl")
    assert sorted(q["id"] for q in queries) == ["en-q1", "en-q3"]
    assert read_qrels_file(tmp_path / "en" / "qrels.trec")["en-q1"] == {"en-0-0-1"}


def test_answer_between_sentences_belongs_to_the_next_one(tmp_path):
    paragraph = {"context": "One.  Two.", "sentence_breaks": [[0, 4], [6, 10]],
                 "qas": [{"id": "q", "question": "?", "answers": [{"text": " Two",
                                                                  "answer_start": 5}]}]}
    write_json(tmp_path / "d" / "en.json", {"data": [{"paragraphs": [paragraph]}]})
    prepare("lareqa", tmp_path / "d", "-o", tmp_path / "out")
    assert read_qrels_file(tmp_path / "out" / "qrels.trec")["en-q"] == {"en-0-0-1"}
    assert [r["text"] for r in read_jsonl(tmp_path / "out" / "corpus.jsonl")] == ["One.", "Two."]


def test_failed_run_keeps_previous_outputs(tmp_path):
    toy = toy_lareqa(tmp_path / "toy")
    prepare("lareqa", toy, "-o", tmp_path / "out")
    before = {p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")}
    (toy / "en.json").write_text('{"data": [}')
    r = run_cli("hbt-prepare", "lareqa", toy, "-o", tmp_path / "out")
    assert r.returncode == 2
    assert {p: (tmp_path / "out" / p).read_bytes() for p in os.listdir(tmp_path / "out")} == before


# ---------------------------------------------------------------- LAReQA pools on real data

def raw_questions(directory):
    """{lang: [(question id, answer text)]} read straight from the JSON files."""
    result = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                doc = json.load(fh)
            result[name[:-5]] = [(qa["id"], qa["answers"][0]["text"]) for article in doc["data"]
                                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    return result


def check_real_pools(directory, out, n_candidates, relevant_range):
    prepare("lareqa", directory, "-o", out)
    queries = read_jsonl(out / "queries.jsonl")
    corpus = {row["id"]: row for row in read_jsonl(out / "corpus.jsonl")}
    qrels = read_qrels_file(out / "qrels.trec")
    raw = raw_questions(directory)

    assert len(corpus) == n_candidates
    assert Counter(q["lang"] for q in queries) == {lang: len(qs) for lang, qs in raw.items()}
    assert len({q["id"] for q in queries}) == len(queries)
    languages_of = defaultdict(set)
    for lang, qs in raw.items():
        for qid, _ in qs:
            languages_of[qid].add(lang)
    answers = {(lang, qid): text for lang, qs in raw.items() for qid, text in qs}
    for query in queries:
        relevant = qrels[query["id"]]
        # one relevant sentence per language holding this question id
        assert sorted(corpus[d]["lang"] for d in relevant) == sorted(languages_of[query["group"]])
        assert relevant_range[0] <= len(relevant) <= relevant_range[1]
        own = [d for d in relevant if corpus[d]["lang"] == query["lang"]]
        answer = answers[(query["lang"], query["group"])]
        assert answer[:3] in corpus[own[0]]["text"] or answer in corpus[own[0]]["context"]
    return queries


def test_xquad_r_pools_match_lareqa(tmp_path):
    queries = check_real_pools(shared_path("data", "xquad-r"), tmp_path / "xquad", 13014, (11, 11))
    assert set(Counter(q["lang"] for q in queries).values()) == {1190}
    assert len(Counter(q["lang"] for q in queries)) == 11


def test_mlqa_r_pools_match_lareqa(tmp_path):
    queries = check_real_pools(shared_path("data", "mlqa-r"), tmp_path / "mlqa", 20534, (2, 4))
    assert len(queries) == 4199
    assert len(Counter(q["lang"] for q in queries)) == 7


def test_bundled_gz_copy_gives_the_same_pools_as_shared_xquad_r(tmp_path):
    shared = shared_path("data", "xquad-r")
    prepare("lareqa", os.path.join(ROOT, "examples", "data", "xquad-r"), "-o", tmp_path / "a",
            "--langs", "en,th")
    prepare("lareqa", shared, "-o", tmp_path / "b", "--langs", "en,th")
    for name in ("queries.jsonl", "corpus.jsonl", "qrels.trec"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# ---------------------------------------------------------------- pairs

def test_pairs_from_lareqa_files(tmp_path):
    toy = toy_lareqa(tmp_path / "xquad-toy")
    prepare("pairs", toy, "-o", tmp_path / "pairs.jsonl")
    rows = read_jsonl(tmp_path / "pairs.jsonl")
    by_key = {(r["group"], r["lang"]): r for r in rows}
    assert len(rows) == 5
    assert by_key[("q1", "de")] == {"group": "q1", "lang": "de", "query": "Was hat Paris?",
                                    "positive": "Es hat einen Turm.", "source": "xquad-toy"}
    assert by_key[("q1", "en")]["positive"] == "It has a tower."

    prepare("pairs", toy, "-o", tmp_path / "p2.jsonl", "--positive", "paragraph",
            "--articles", "0:1", "--langs", "de", "--source", "xquad")
    rows = read_jsonl(tmp_path / "p2.jsonl")
    assert [(r["group"], r["lang"], r["source"]) for r in rows] == [("q1", "de", "xquad")]
    assert rows[0]["positive"] == "Paris ist groß. Sehr groß. Es hat einen Turm. Er ist aus Eisen."

    prepare("pairs", toy, "-o", tmp_path / "p3.jsonl", "--positive", "sentence+context",
            "--articles", "0:1", "--langs", "de")
    rows = read_jsonl(tmp_path / "p3.jsonl")
    assert rows[0]["positive"] == ("Es hat einen Turm. "
                                   "Paris ist groß. Sehr groß. Es hat einen Turm. Er ist aus Eisen.")


def test_pairs_from_plain_squad_split_sentences_around_the_answer(tmp_path):
    context = "The U.S. Army was founded in 1775. It is large! Is it old? Yes."
    qas = [{"id": "a", "question": "Who was founded?", "answers": [
               {"text": "U.S. Army", "answer_start": context.index("U.S.")}]},
           {"id": "b", "question": "Is it large?", "answers": [
               {"text": "large", "answer_start": context.index("large")}]},
           {"id": "c", "question": "Unanswerable?", "answers": [], "is_impossible": True}]
    write_json(tmp_path / "squad" / "en.json.gz",
               {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]},
               gz=True)
    zh = "第一句。答案在这里！最后"
    write_json(tmp_path / "other" / "zh.json", {"data": [{"paragraphs": [{"context": zh, "qas": [
        {"id": "a", "question": "?", "answers": [{"text": "答案", "answer_start": 4}]}]}]}]})
    prepare("pairs", tmp_path / "squad", tmp_path / "other", "-o", tmp_path / "pairs.jsonl")
    rows = {(r["group"], r["lang"]): r for r in read_jsonl(tmp_path / "pairs.jsonl")}
    assert set(rows) == {("a", "en"), ("b", "en"), ("a", "zh")}  # the unanswerable one is left out
    # the splitter cuts after "U.S."; the positive covers the whole answer
    assert rows[("a", "en")]["positive"] == "The U.S. Army was founded in 1775."
    assert rows[("b", "en")]["positive"] == "It is large!"
    assert rows[("a", "zh")] == {"group": "a", "lang": "zh", "query": "?",
                                 "positive": "答案在这里！", "source": "other"}


def test_pairs_to_stdout_with_languages_missing_from_one_folder(tmp_path):
    toy = toy_lareqa(tmp_path / "toy")
    write_json(tmp_path / "fr-only" / "fr.json", {"data": [{"paragraphs": [{
        "context": "Oui.", "qas": [{"id": "f", "question": "?",
                                    "answers": [{"text": "Oui", "answer_start": 0}]}]}]}]})
    r = prepare("pairs", toy, tmp_path / "fr-only", "--langs", "fr,de")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted((row["lang"], row["group"]) for row in rows) == [
        ("de", "q1"), ("de", "q2"), ("fr", "f")]


def test_sentence_splitter_and_article_slices():
    text = "Hello world.  Second one! “Quoted?” Next\nline 中文。再见！ नमस्ते। ok"
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        "Hello world.", "Second one!", "“Quoted?”", "Next", "line 中文。", "再见！", "नमस्ते।", "ok"]
    assert sentence_spans("  ") == []
    assert parse_articles("36:") == slice(36, None)
    assert parse_articles(" :-12 ") == slice(None, -12)
    assert parse_articles(None) == slice(None)
    with pytest.raises(InputError):
        parse_articles("1:2:3")


# ---------------------------------------------------------------- MIRACL

def count_lines(path):
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def test_miracl_mini_swahili(tmp_path):
    data = shared_path("data", "miracl-mini")
    topics = os.path.join(data, "topics.dev-subset.sw.tsv")
    qrels = os.path.join(data, "qrels.dev-subset.sw.tsv")
    corpus = os.path.join(data, "corpus.sw.jsonl")
    prepare("miracl", "--topics", topics, "--qrels", qrels, "--corpus", corpus, "--lang", "sw",
            "-o", tmp_path / "out")
    queries = read_jsonl(tmp_path / "out" / "queries.jsonl")
    passages = read_jsonl(tmp_path / "out" / "corpus.jsonl")
    assert len(queries) == count_lines(topics) and {q["lang"] for q in queries} == {"sw"}
    assert count_lines(tmp_path / "out" / "qrels.trec") == count_lines(qrels)
    assert len(passages) == count_lines(corpus)
    with open(corpus, "rb") as fh:
        first = json.loads(fh.readline())
    assert passages[0] == {"id": first["docid"], "title": first["title"], "lang": "sw",
                           "text": first["title"] + " " + first["text"]}
    relevant = read_qrels_file(tmp_path / "out" / "qrels.trec")
    ids = {p["id"] for p in passages}
    assert all(docs <= ids for docs in relevant.values())  # MIRACL-mini holds every relevant one
    with open(topics, encoding="utf-8") as fh:
        qid, text = fh.readline().rstrip("\n").split("\t")
    assert queries[0] == {"id": qid, "text": text, "lang": "sw"}


def test_miracl_dev_without_corpus(tmp_path):
    data = shared_path("data", "miracl-dev")
    topics = os.path.join(data, "topics.miracl-v1.0-yo-dev.tsv")
    qrels = os.path.join(data, "qrels.miracl-v1.0-yo-dev.tsv")
    prepare("miracl", "--topics", topics, "--qrels", qrels, "--lang", "yo", "-o", tmp_path / "o")
    assert sorted(os.listdir(tmp_path / "o")) == ["qrels.trec", "queries.jsonl"]
    assert count_lines(tmp_path / "o" / "queries.jsonl") == count_lines(topics)
    assert count_lines(tmp_path / "o" / "qrels.trec") == count_lines(qrels)


def test_miracl_gz_corpus_in_several_files_reports_missing_judged(tmp_path):
    (tmp_path / "topics.tsv").write_text("q1\tWhere?\nq2\tWhen?\n")
    (tmp_path / "qrels.tsv").write_text("q1 Q0 d1 1\nq1 Q0 gone 0\nq2 Q0 d3 2\n")
    shard = b'{"docid": "d1", "title": "Title", "text": "one"}\n{"docid": "d2", "text": "two"}\n'
    (tmp_path / "docs-0.jsonl.gz").write_bytes(gzip.compress(shard))
    (tmp_path / "docs-1.jsonl").write_text('{"docid": "d3", "title": "", "text": "three"}\n')
    r = prepare("miracl", "--topics", tmp_path / "topics.tsv", "--qrels", tmp_path / "qrels.tsv",
                "--corpus", tmp_path / "docs-0.jsonl.gz", "--corpus", tmp_path / "docs-1.jsonl",
                "--lang", "xx", "-o", tmp_path / "out")
    assert b"1 judged docids not in the corpus" in r.stderr
    assert [(p["id"], p["text"], p["title"]) for p in read_jsonl(tmp_path / "out" / "corpus.jsonl")
            ] == [("d1", "Title one", "Title"), ("d2", "two", ""), ("d3", "three", "")]
    assert (tmp_path / "out" / "qrels.trec").read_text().splitlines() == [
        "q1 0 d1 1", "q1 0 gone 0", "q2 0 d3 2"]


def test_corpus_is_read_lazily(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"docid": "d1", "title": "", "text": "x"}\nnot json\n')
    rows = iter_corpus([str(path)], "xx")
    assert next(rows)["id"] == "d1"  # the bad second line is not read yet
    with pytest.raises(InputError, match="c.jsonl:2"):
        next(rows)


def test_corpus_stream_memory_does_not_grow_with_the_corpus(tmp_path):
    n_passages = 30_000
    filler = "lorem ipsum dolor sit amet " * 25
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wt", compresslevel=1) as fh:
        for i in range(n_passages):
            fh.write(json.dumps({"docid": f"{i}#0", "title": f"T{i}", "text": f"{i} {filler}"})
                     + "\n")
    (tmp_path / "topics.tsv").write_text("q\tquestion\n")
    (tmp_path / "qrels.tsv").write_text("q Q0 7#0 1\n")
    corpus_bytes = n_passages * len(filler)
    tracemalloc.start()
    try:
        summary = prepare_miracl(str(tmp_path / "out"), str(tmp_path / "topics.tsv"),
                                 str(tmp_path / "qrels.tsv"), "xx",
                                 [str(tmp_path / "corpus.jsonl.gz")], progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary == {"queries": 1, "judgements": 1, "passages": n_passages, "judged_missing": 0}
    assert corpus_bytes > 20_000_000
    assert peak < 4_000_000, f"peak {peak} bytes while streaming {corpus_bytes} bytes"


def test_subcommands_have_examples_and_no_subcommand_is_a_one_line_error():
    for name in ("lareqa", "pairs", "miracl"):
        r = run_cli("hbt-prepare", name, "--help")
        assert r.returncode == 0
        assert f"hbt-prepare {name}".encode() in r.stdout.split(b"Example")[1]
    r = run_cli("hbt-prepare")
    assert r.returncode == 2 and len(r.stderr.decode().strip().splitlines()) == 1
    assert b"lareqa" in r.stderr
