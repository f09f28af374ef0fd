"""hbt-make-batches (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-make-batches: not implemented yet\n")
    sys.exit(3)
