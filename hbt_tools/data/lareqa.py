"""LAReQA retrieval pools (XQuAD-R, MLQA-R) and parallel training pairs from SQuAD-format folders.

Pools follow LAReQA (Roy et al. 2020): every sentence of every paragraph of every language is a
candidate; a candidate is relevant to a question when it is the sentence holding the answer start
of a question with the same id, in any language. Nothing is de-duplicated (identical sentences in
two paragraphs are two candidates), as in LAReQA's counts.

Ids: query ``{lang}-{question id}`` (``group`` keeps the bare question id); candidate
``{lang}-{article}-{paragraph}-{sentence}`` with 0-based indices into the file (the article index
is the one before any ``--articles`` slice, so ids are stable across slices).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from ..io import InputError
from .squad import Paragraph, language_files, read_squad

POSITIVE_KINDS = ("sentence", "paragraph", "sentence+context")


@dataclass
class EvalSet:
    queries: list[dict] = field(default_factory=list)  # id, text, lang, group
    corpus: list[dict] = field(default_factory=list)  # id, text, context, lang
    qrels: list[tuple[str, str, int]] = field(default_factory=list)  # (query id, doc id, rel)

    def relevant_counts(self) -> list[int]:
        counts = dict.fromkeys((q["id"] for q in self.queries), 0)
        for qid, _, _ in self.qrels:
            counts[qid] += 1
        return list(counts.values())


def candidate_id(lang: str, paragraph: Paragraph, sentence: int) -> str:
    return f"{lang}-{paragraph.article}-{paragraph.index}-{sentence}"


def query_id(lang: str, question_id: str) -> str:
    return f"{lang}-{question_id}"


def build_eval_set(directory: str, langs: list[str] | None = None,
                   articles: slice = slice(None)) -> EvalSet:
    """Queries, candidate sentences and qrels of the LAReQA pools of one dataset folder."""
    result = EvalSet()
    answer_sentences: dict[str, list[str]] = {}  # question id -> relevant candidate ids
    for lang, path in language_files(directory, langs).items():
        for paragraph in read_squad(path, articles):
            for i, sentence in enumerate(paragraph.sentences):
                result.corpus.append({"id": candidate_id(lang, paragraph, i), "text": sentence,
                                      "context": paragraph.context, "lang": lang})
            for question in paragraph.questions:
                result.queries.append({"id": query_id(lang, question.id), "text": question.text,
                                       "lang": lang, "group": question.id})
                answer = candidate_id(lang, paragraph,
                                      paragraph.sentence_index(question.answer_start))
                answer_sentences.setdefault(question.id, []).append(answer)
    if not result.queries:
        raise InputError("no questions in the selected languages and articles", directory)
    for query in result.queries:
        for docid in answer_sentences[query["group"]]:
            result.qrels.append((query["id"], docid, 1))
    return result


def iter_pairs(directories: list[str], langs: list[str] | None = None,
               articles: slice = slice(None), positive: str = "sentence",
               source: str | None = None) -> Iterator[dict]:
    """Training pairs (SPEC pairs.jsonl rows) from SQuAD-format folders, file by file.

    ``positive="sentence"``: the sentence holding the answer start (LAReQA's ``sentence_breaks``
    when the paragraph has them; otherwise :func:`~hbt_tools.data.squad.sentence_spans`, with the
    sentences the answer runs into joined, so that an abbreviation inside the answer cannot cut
    it). ``positive="paragraph"``: the whole context. ``positive="sentence+context"``: the
    sentence, a space, then its paragraph: the text that LAReQA candidates are encoded as
    (``hbt-encode``'s passage default), so training matches evaluation. ``source`` defaults to each folder's name.
    ``langs`` must each exist in at least one folder; a folder lacking some of them is fine.
    """
    if positive not in POSITIVE_KINDS:
        raise InputError(f"--positive: expected one of {', '.join(POSITIVE_KINDS)}, "
                         f"got {positive!r}")
    files = {directory: language_files(directory) for directory in directories}
    if langs is not None:
        known = {lang for by_lang in files.values() for lang in by_lang}
        unknown = [lang for lang in langs if lang not in known]
        if unknown:
            raise InputError(f"--langs: no file for {', '.join(map(repr, unknown))} in "
                             f"{', '.join(directories)} (languages: {', '.join(sorted(known))})")
    for directory, by_lang in files.items():
        name = source or os.path.basename(os.path.normpath(directory))
        for lang, path in by_lang.items():
            if langs is not None and lang not in langs:
                continue
            for paragraph in read_squad(path, articles):
                for question in paragraph.questions:
                    yield {"group": question.id, "lang": lang, "query": question.text,
                           "positive": _positive_text(paragraph, question, positive),
                           "source": name}


def _positive_text(paragraph: Paragraph, question, positive: str) -> str:
    if positive == "paragraph":
        return paragraph.context
    if positive == "sentence+context":
        return f"{_positive_text(paragraph, question, 'sentence')} {paragraph.context}"
    first = paragraph.sentence_index(question.answer_start)
    if paragraph.has_sentence_breaks:
        return paragraph.sentences[first]
    answer_end = question.answer_start + max(len(question.answer_text), 1) - 1
    last = max(first, min(paragraph.sentence_index(answer_end), len(paragraph.spans) - 1))
    return paragraph.context[paragraph.spans[first][0]:paragraph.spans[last][1]]
