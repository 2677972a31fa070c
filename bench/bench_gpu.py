"""Smoke test of the GPU benchmark (bench/gpu.py): on a GPU or, without one, on the Numba CUDA
simulator (tests/conftest.py turns it on), one tiny layer of each kind through the whole
report: timing loop, peers when PyTorch has CUDA, table and JSON. The numbers of a real run
are `python -m bench.gpu --save` on a GPU; this only proves the script works end to end."""
import json

import numpy as np
import pytest

import sharenet_fast as sf
from bench import gpu
from bench.shapes import ConvShape

pytestmark = pytest.mark.skipif(sf.backends()["numba-cuda"] != "available",
                                reason="numba-cuda backend not available")

TINY = ConvShape(2, 2, 9, 9, 4, 3, 3, stride=2, padding=1)


def test_gpu_report_runs_end_to_end(tmp_path):
    result = gpu.run({"tiny": TINY}, batch=None, reps=1, warmup=0, log=lambda *a: None,
                     backends=["numba-cuda"])
    rows = [r for r in result["rows"] if r["pass_"] in ("forward", "backward")]
    assert [(r["layer"], r["pass_"]) for r in rows] == [
        (layer, p) for layer in ("shared", "tiled", "local") for p in ("forward", "backward")]
    modes = [r for r in result["rows"] if r["pass_"] == "weight_grad_modes"]
    assert len(modes) == 1 and len(modes[0]["deterministic_samples"]) == 1
    for r in rows:
        assert len(r["ours_samples"]) == 1
        if "err" in r:                      # a CUDA PyTorch peer ran: ours must agree with it
            assert r["err"] < 1e-4, r
    text = gpu.markdown(result)
    assert "| tiny | local | backward | numba-cuda |" in text and "Targets (issue 4" in text
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    assert json.loads(path.read_text())["rows"][0]["shape"] == "tiny"
    assert np.isfinite(rows[0]["params"])
