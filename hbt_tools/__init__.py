"""hbt-tools: hybrid batch training and evaluation of multilingual dense retrievers.

Every command-line tool is a thin layer over plain functions in this package, so notebooks can
call the same code. Importing ``hbt_tools`` never imports torch or transformers.
"""
__version__ = "0.1.0"
