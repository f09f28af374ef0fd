"""SQuAD-format files (plain SQuAD, XQuAD, MLQA, and LAReQA's XQuAD-R / MLQA-R).

A dataset is a folder with one file per language, ``{lang}.json`` or ``{lang}.json.gz``; the
language versions of one question share its ``id``. LAReQA files add, per paragraph,
``sentence_breaks`` (``[start, end)`` character spans into ``context``) and ``sentences`` (the
sentence texts). For a paragraph without ``sentence_breaks``, :func:`sentence_spans` splits the
context with a simple punctuation rule.

The files are single JSON documents, so errors name the file and the JSON path of the bad value
(``data[3].paragraphs[0].qas[2].id``) instead of a line.
"""
from __future__ import annotations

import bisect
import gzip
import os
import re
import zlib
from dataclasses import dataclass
from typing import Iterator

import orjson

from ..io import InputError, open_input
from ..trec import is_trec_word

SUFFIXES = (".json.gz", ".json")


@dataclass
class Question:
    id: str
    text: str
    answer_start: int
    answer_text: str


@dataclass
class Paragraph:
    article: int  # index of the article in the file (before any --articles slice)
    index: int  # index of the paragraph in its article
    context: str
    sentences: list[str]
    spans: list[tuple[int, int]]  # [start, end) of each sentence in context
    questions: list[Question]
    has_sentence_breaks: bool

    def sentence_index(self, offset: int) -> int:
        """The sentence holding character ``offset`` (the next one when it falls between two)."""
        return bisect.bisect_right([end for _, end in self.spans], offset)


# ---------------------------------------------------------------- finding files

def language_files(directory: str, langs: list[str] | None = None) -> dict[str, str]:
    """``{lang: path}`` for the ``{lang}.json[.gz]`` files of ``directory`` (only ``langs``)."""
    if not os.path.isdir(directory):
        raise InputError("no such directory" if not os.path.exists(directory)
                         else "expected a directory of {lang}.json[.gz] files", directory)
    found: dict[str, str] = {}
    for name in sorted(os.listdir(directory)):
        suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
        if suffix is None or name.startswith("."):
            continue
        lang = name[:-len(suffix)]
        if lang in found:
            raise InputError(f"two files for language {lang!r}: "
                             f"{os.path.basename(found[lang])} and {name}", directory)
        found[lang] = os.path.join(directory, name)
    if not found:
        raise InputError("no {lang}.json or {lang}.json.gz files", directory)
    if langs is None:
        return found
    unknown = [lang for lang in langs if lang not in found]
    if unknown:
        raise InputError(f"--langs: no file for {', '.join(map(repr, unknown))} "
                         f"(languages here: {', '.join(found)})", directory)
    return {lang: found[lang] for lang in langs}


def parse_articles(spec: str | None) -> slice:
    """``"36:48"``, ``":36"``, ``"-12:"`` -> a slice of each file's articles (Python semantics)."""
    if spec is None:
        return slice(None)
    match = re.fullmatch(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*", spec)
    if not match:
        raise InputError(f"--articles: expected START:END (e.g. 0:36 or 36:), got {spec!r}")
    start, end = (int(x) if x is not None else None for x in match.groups())
    return slice(start, end)


# ---------------------------------------------------------------- sentence splitting

# A sentence ends at . ! ? or … (optionally followed by closing quotes or brackets) before white
# space, right after a full-width or Indic/Arabic terminator (。！？।॥؟), or at a line break.
_SENTENCE_END = re.compile(r"""[.!?…]["'”’»)\]]*(?=\s)|[。！？।॥؟]["'”’»)\]」』]*|\n""")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Split ``text`` into sentences: ``[start, end)`` spans without surrounding white space.

    The rule is deliberately simple (no abbreviation list, no Thai segmentation): it serves to
    find the sentence around an answer in SQuAD files that ship no ``sentence_breaks``.
    """
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        _append_stripped(spans, text, start, match.end())
        start = match.end()
    _append_stripped(spans, text, start, len(text))
    return spans


def _append_stripped(spans: list, text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


# ---------------------------------------------------------------- reading

def load_json(path: str):
    """Parse one JSON document (``.gz`` decompressed); errors name the file and the line."""
    try:
        with open_input(path) as fh:
            raw = fh.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise InputError(f"not a valid gzip file ({e})", path) from None
    if not raw.strip():
        raise InputError("empty file", path)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            line = raw.count(b"\n", 0, bad.start) + 1
            raise InputError(f"not valid UTF-8 (byte {bad.start})", path, line) from None
        raise InputError(f"invalid JSON ({e.msg})", path, e.lineno) from None


def read_squad(path: str, articles: slice = slice(None)) -> Iterator[Paragraph]:
    """The paragraphs of the selected articles of one SQuAD-format file, checked field by field.

    Questions without an answer (SQuAD 2.0's unanswerable ones) are left out; the first answer of
    a question is its answer. Question ids must be unique within the file.
    """
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise InputError(f"expected a JSON object with 'data', got {type(doc).__name__}", path)
    data = _get(doc, "data", list, path, "data")
    seen_ids: set[str] = set()
    for article_index in range(len(data))[articles]:
        where = f"data[{article_index}]"
        article = _expect(data[article_index], dict, path, where)
        for p_index, paragraph in enumerate(_get(article, "paragraphs", list, path,
                                                 f"{where}.paragraphs")):
            yield _paragraph(paragraph, article_index, p_index, path,
                             f"{where}.paragraphs[{p_index}]", seen_ids)


def _paragraph(obj, article_index: int, p_index: int, path: str, where: str,
               seen_ids: set[str]) -> Paragraph:
    obj = _expect(obj, dict, path, where)
    context = _get(obj, "context", str, path, f"{where}.context")
    if "sentence_breaks" in obj:
        spans = _sentence_breaks(obj["sentence_breaks"], len(context), path,
                                 f"{where}.sentence_breaks")
        if "sentences" in obj:  # LAReQA's own sentence texts (a few spans are off by one char)
            sentences = _get(obj, "sentences", list, path, f"{where}.sentences")
            if len(sentences) != len(spans):
                raise InputError(f"{len(sentences)} sentences but {len(spans)} sentence_breaks",
                                 path, None, f"{where}.sentences")
            for i, s in enumerate(sentences):
                _expect(s, str, path, f"{where}.sentences[{i}]")
        else:
            sentences = [context[start:end] for start, end in spans]
    else:
        spans = sentence_spans(context)
        sentences = [context[start:end] for start, end in spans]
    questions = []
    for q_index, qa in enumerate(_get(obj, "qas", list, path, f"{where}.qas")):
        question = _question(qa, context, spans, path, f"{where}.qas[{q_index}]")
        if question is None:
            continue
        if question.id in seen_ids:
            raise InputError(f"duplicate question id {question.id!r}", path, None,
                             f"{where}.qas[{q_index}].id")
        seen_ids.add(question.id)
        questions.append(question)
    return Paragraph(article_index, p_index, context, sentences, spans, questions,
                     "sentence_breaks" in obj)


def _question(qa, context: str, spans, path: str, where: str) -> Question | None:
    qa = _expect(qa, dict, path, where)
    qid = _get(qa, "id", str, path, f"{where}.id")
    if not is_trec_word(qid):
        raise InputError(f"question id {qid!r} is empty or holds white space or NUL", path,
                         None, f"{where}.id")
    text = _get(qa, "question", str, path, f"{where}.question")
    answers = _get(qa, "answers", list, path, f"{where}.answers")
    if not answers or qa.get("is_impossible") is True:
        return None
    answer = _expect(answers[0], dict, path, f"{where}.answers[0]")
    start = _get(answer, "answer_start", int, path, f"{where}.answers[0].answer_start")
    answer_text = _get(answer, "text", str, path, f"{where}.answers[0].text")
    if not 0 <= start < len(context) or not spans or start >= spans[-1][1]:
        raise InputError(f"answer_start {start} is outside the paragraph's sentences "
                         f"(context has {len(context)} characters)", path, None,
                         f"{where}.answers[0].answer_start")
    return Question(qid, text, start, answer_text)


def _sentence_breaks(value, context_length: int, path: str, where: str) -> list[tuple[int, int]]:
    _expect(value, list, path, where)
    spans, previous_end = [], 0
    for i, span in enumerate(value):
        ok = (isinstance(span, list) and len(span) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) for x in span))
        if not ok or not previous_end <= span[0] < span[1] <= context_length:
            raise InputError(f"expected increasing [start, end] within the context "
                             f"({context_length} characters), got {span!r}", path, None,
                             f"{where}[{i}]")
        spans.append((span[0], span[1]))
        previous_end = span[1]
    if not spans:
        raise InputError("empty", path, None, where)
    return spans


def _expect(value, kind: type, path: str, where: str):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputError(f"expected {_KIND_NAMES[kind]}, got {type(value).__name__}", path, None,
                         where)
    return value


def _get(obj: dict, key: str, kind: type, path: str, where: str):
    if key not in obj or obj[key] is None:
        raise InputError("missing", path, None, where)
    return _expect(obj[key], kind, path, where)


_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
