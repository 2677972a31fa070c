"""bench/report/plots.py: both PNGs from a CPU benchmark JSON (the committed results)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("matplotlib")
from bench.report import plots  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                       "results", "cpu_amd_epyc_2core.json")


def test_plots_from_committed_results(tmp_path):
    assert plots.main([RESULTS, "--out-dir", str(tmp_path)]) == 0
    for suffix in ("times", "roofline"):
        png = tmp_path / f"cpu_amd_epyc_2core_{suffix}.png"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, suffix
