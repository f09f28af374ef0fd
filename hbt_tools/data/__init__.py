"""Readers for public data sets, turning them into the toolkit's JSONL files (``hbt-prepare``).

* :mod:`.squad`: SQuAD-format files (plain SQuAD, XQuAD, MLQA, LAReQA's XQuAD-R / MLQA-R).
* :mod:`.lareqa`: LAReQA retrieval pools (queries, candidate sentences, qrels) and training pairs.
* :mod:`.miracl`: MIRACL topics, qrels and a streamed passage corpus.
* :mod:`.evalset`: writing queries.jsonl / qrels.trec / corpus.jsonl together, atomically.
"""
