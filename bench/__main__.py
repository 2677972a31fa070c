"""python -m bench: see bench/report/build.py."""
import sys

from bench.report.build import main

sys.exit(main())
