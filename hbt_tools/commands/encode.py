"""hbt-encode (not built yet)."""
import sys


def main():
    sys.stderr.write("hbt-encode: not implemented yet\n")
    sys.exit(3)
