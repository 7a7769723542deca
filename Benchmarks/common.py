"""Helpers shared by the benchmark scripts."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bulkhead_path(arg=None):
    """The bulkhead binary to measure: the one given, else the best build present."""
    if arg:
        return arg
    for p in [".build-static/release/bulkhead", ".build/release/bulkhead", ".build/debug/bulkhead"]:
        if (REPO / p).exists():
            return str(REPO / p)
    sys.exit("build bulkhead first (make release)")
