"""python -m bench: see bench/report.py."""
import sys

from bench.report import main

sys.exit(main())
