"""hbt-search (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-search: not implemented yet\n")
    sys.exit(3)
