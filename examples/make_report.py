#!/usr/bin/env python
"""Write docs/results.md (and docs/figures/*.png) from the outputs of examples/reproduce_paper.sh.

    python examples/make_report.py [RESULTS_DIR] [-o docs/results.md]

Missing results (a run still going, or cut short) are listed in the report, not fatal.
The paper's numbers come from examples/paper_2408.10536.json (arXiv 2408.10536, Tables 1-2, 3-6
means, 12-13).
"""
import argparse
import sys
from pathlib import Path

from hbt_tools.report import write_report

here = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("results", nargs="?", default="results/paper",
                    help="results folder of reproduce_paper.sh [results/paper]")
parser.add_argument("-o", "--output", default="docs/results.md", help="[docs/results.md]")
parser.add_argument("--paper", default=str(here / "paper_2408.10536.json"),
                    help="the paper's numbers (JSON)")
args = parser.parse_args()
if not Path(args.results).is_dir():
    sys.exit(f"make_report.py: {args.results}: no such results folder")
missing = write_report(args.results, args.paper, args.output)
print(f"make_report.py: wrote {args.output}"
      + (f" ({len(missing)} kinds of result missing, listed in it)" if missing else ""),
      file=sys.stderr)
