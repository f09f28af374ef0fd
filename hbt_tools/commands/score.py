"""hbt-score (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-score: not implemented yet\n")
    sys.exit(3)
