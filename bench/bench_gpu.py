"""Smoke test of `python -m bench --gpu` (bench/report/build.py, bench/harness.py with
bench/gpu.py's GpuTarget): on a GPU or, without one, on the Numba CUDA simulator (conftest.py
turns it on), one tiny layer of each kind through the whole report: timing loop, peers when
PyTorch has CUDA, the tables, the GPU targets (bench/report/targets.py) and a JSON that matches
bench/report/schema.py. The numbers of a real run are `python -m bench --gpu --full --save` on a
GPU; this only proves the path works end to end."""
import json

import pytest

import sharenet_fast as sf
from bench.report import build as report
from bench.report import schema
from bench.shapes import ConvShape

pytestmark = pytest.mark.skipif(sf.backends()["numba-cuda"] != "available",
                                reason="numba-cuda backend not available")

# P = Q = 2: the smallest output a 2 x 2 tiled layer takes (a local layer launches a block
# per bank, and every simulated block costs ~30 ms)
TINY = ConvShape(1, 2, 3, 3, 4, 3, 3, stride=2, padding=1)


def test_gpu_report_runs_end_to_end(tmp_path, capsys):
    args = report.parse_args(["--gpu", "--backend", "numba-cuda", "--repeat", "1",
                              "--min-time", "0"])
    doc = report.run(args, shapes={"tiny": TINY})
    assert schema.validate(doc) == []
    ours = [(r["layer"], schema.label(r)) for r in doc["results"] if r["impl"] == "numba-cuda"]
    want = [("conv2d", "forward"), ("conv2d", "backward"), ("conv2d", "weight"),
            ("conv2d", "weight (deterministic)"), ("tiled_conv2d", "forward"),
            ("tiled_conv2d", "backward"), ("local2d", "forward"), ("local2d", "backward"),
            ("local2d", "backward (grad_weight=)"), ("local2d", "soft_sharing_penalty")]
    # GPU runs time every pass again in bfloat16 (the GPU kernels have 16-bit storage too)
    assert [row for row in ours if "[bfloat16]" not in row[1]] == want
    bf16 = {(layer, label.replace(" [bfloat16]", "")) for layer, label in ours
            if "[bfloat16]" in label}
    assert bf16 <= set(want) and {(layer, p) for layer in ("conv2d", "tiled_conv2d", "local2d")
                                  for p in ("forward", "backward")} <= bf16, sorted(bf16)
    for r in doc["results"]:
        assert len(r["samples_s"]) == 1
        if r["rel_err"] is not None:         # the oracle, or a CUDA PyTorch peer that ran
            assert r["rel_err"] < (2.0**-8 + 1e-5 if r.get("dtype") == "bfloat16" else 1e-4), r
    assert next(r for r in doc["results"]
                if r["pass"] == "soft_sharing_penalty")["rel_err"] < 1e-6
    text = report.format_report(doc, markdown=True)
    assert "### tiny" in text and "ours (numba-cuda)" in text and "Targets (gpu" in text
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert schema.load(str(path))["config"]["target"] == "gpu"
