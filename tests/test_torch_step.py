"""bench/torch_step.py runs (quick) and reports every variant: a training step per first layer,
ours and PyTorch's, and the torch path's per-call overhead over the NumPy API."""
import json

import pytest

pytest.importorskip("torch")
from bench import torch_step  # noqa: E402


def test_quick_run_reports_every_variant(tmp_path, capsys):
    path = tmp_path / "step.json"
    assert torch_step.main(["--quick", "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    assert set(rep["step_s"]) == {"sft.LocallyConnected2d", "unfold+einsum local",
                                  "sft.Conv2d", "torch.nn.Conv2d"}
    assert all(s > 0 for s in rep["step_s"].values())
    for op in ("conv2d", "local2d"):
        assert set(rep["overhead_s"][op]) >= {"numpy forward", "torch forward",
                                              "numpy forward+backward",
                                              "torch forward+backward"}
    out = capsys.readouterr().out
    assert "| sft.LocallyConnected2d |" in out and "| local2d | forward |" in out
    assert "as fast as the unfold+einsum model's (target >= 20x: " in out
