"""hbt-index (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-index: not implemented yet\n")
    sys.exit(3)
