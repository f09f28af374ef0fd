"""Evaluation: trec_eval-equivalent run scoring, the LAReQA full-pool protocol, paired
randomization tests and readable tables (the library behind ``hbt-score``)."""
