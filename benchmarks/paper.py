"""Radical-Cylon paper reproduction: a thin wrapper of ``parsl-rcylon bench paper``.

    python benchmarks/paper.py [--quick] [--out DIR] [--ranks 1,2,4] [--rows-per-rank N] [--iterations K]

See ``docs/benchmarks.md`` and :mod:`parsl_rcylon.bench.paper`.
"""
from __future__ import annotations

import sys

from parsl_rcylon.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "paper", *sys.argv[1:]]))
