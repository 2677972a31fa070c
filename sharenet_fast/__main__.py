"""`python -m sharenet_fast info | verify | params` (the `sharenet-fast` command)."""
import sys

from .cli import main

sys.exit(main())
