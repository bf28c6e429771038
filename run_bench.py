#!/usr/bin/env python
"""kdbench entry point: `python run_bench.py --help`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kdbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
