"""hbt-prepare (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-prepare: not implemented yet\n")
    sys.exit(3)
