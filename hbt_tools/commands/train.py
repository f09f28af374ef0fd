"""hbt-train (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-train: not implemented yet\n")
    sys.exit(3)
