"""bench/report/compare.py: regressions beyond the spread of the samples, CPU and GPU runs."""
import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.report import compare  # noqa: E402


from _bench_docs import make_doc  # noqa: E402


def _cpu_doc(times, device="AMD EPYC, 2 CPUs"):
    return make_doc(times, device=device)


def _noisy(rng, median, n=9, spread=0.03):
    return median * (1 + spread * rng.standard_normal(n))


def _run(old, new, tmp_path, *extra):
    for name, doc in (("old", old), ("new", new)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    out = io.StringIO()
    code = compare.main([str(tmp_path / "old.json"), str(tmp_path / "new.json"), *extra],
                        out=out)
    return code, out.getvalue()


def test_regression_beyond_the_spread_fails(tmp_path):
    rng = np.random.default_rng(0)
    key = ("vgg_3x3", "local2d", "forward", "cpu")
    peer = ("vgg_3x3", "local2d", "forward", "torch-unfold")
    old = _cpu_doc({key: _noisy(rng, 0.010), peer: _noisy(rng, 0.050)})
    new = _cpu_doc({key: _noisy(rng, 0.013), peer: _noisy(rng, 0.050)})
    code, text = _run(old, new, tmp_path)
    assert code == 1
    assert "| vgg_3x3 | local2d | forward | cpu | 10.0" in text and "SLOWER (regression)" in text
    assert "1 regressions of ours" in text


def test_noise_and_peer_slowdowns_are_not_regressions(tmp_path):
    rng = np.random.default_rng(1)
    key, peer = ("cifar_5x5", "conv2d", "backward", "cpu"), ("cifar_5x5", "conv2d", "backward",
                                                             "torch-conv2d")
    old = _cpu_doc({key: _noisy(rng, 0.010, spread=0.05), peer: _noisy(rng, 0.02)})
    new = _cpu_doc({key: _noisy(rng, 0.0102, spread=0.05), peer: _noisy(rng, 0.04)})
    code, text = _run(old, new, tmp_path, "--all")
    assert code == 0, text
    assert "| cpu |" in text and "| same |" in text        # listed with --all, within spread
    assert "| torch-conv2d |" in text and "slower" in text  # the peer got slower: not ours


def test_judge_needs_both_size_and_separation():
    rng = np.random.default_rng(2)
    base = _noisy(rng, 1.0, n=15, spread=0.01)
    assert compare.judge(base, base * 1.2) == "slower"
    assert compare.judge(base, base / 1.2) == "faster"
    assert compare.judge(base, base * 1.02) == "same"                 # under the threshold
    wide = _noisy(rng, 1.0, n=15, spread=0.5)
    assert compare.judge(wide, wide * 1.1) == "same"                  # inside the noise


def test_gpu_runs_missing_keys_and_machines(tmp_path):
    def gpu_doc(s):
        return make_doc({("alexnet_conv1", "local2d", "forward", "cupy"): [s, s * 1.01, s * .99, s],
                         ("alexnet_conv1", "local2d", "forward", "torch-unfold"): [5e-3, 5.1e-3],
                         ("alexnet_conv1", "conv2d", "weight (deterministic)", "cupy"):
                             [1e-3, 1.01e-3, 0.99e-3]},
                        device="NVIDIA H100 80GB HBM3", ours=("cupy",), target="gpu")
    t = compare.timings(gpu_doc(2e-3))
    assert t[("alexnet_conv1", "local2d", "forward", "cupy")][0] == 2.0e-3
    assert ("alexnet_conv1", "conv2d", "weight (deterministic)", "cupy") in t
    code, text = _run(gpu_doc(2e-3), gpu_doc(1e-3), tmp_path)
    assert code == 0 and "faster" in text
    code, text = _run(gpu_doc(1e-3), gpu_doc(2e-3), tmp_path)
    assert code == 1 and "SLOWER (regression)" in text               # cupy is ours there
    cpu = _cpu_doc({("x", "conv2d", "forward", "cpu"): [1.0, 1.0, 1.0]})
    code, text = _run(cpu, gpu_doc(1e-3), tmp_path)
    assert "machines differ" in text and "only in old: x/conv2d/forward/cpu" in text


def test_files_of_another_format_are_refused(tmp_path, capsys):
    old = {"results": [dict(shape="x", layer="conv2d", impl="ours", samples_s=[1.0],
                            **{"pass": "forward"})]}          # a report from before schema 2
    code, _ = _run(old, _cpu_doc({("x", "conv2d", "forward", "cpu"): [1.0]}), tmp_path)
    assert code == 2 and "re-run python -m bench --json" in capsys.readouterr().err


def test_moved_machine_limits_are_noted(tmp_path):
    """A run on a slower moment of a shared VM (its sgemm measured at 0.4x) is said to be one."""
    times = {("x", "conv2d", "forward", "cpu"): [1.0, 1.0, 1.0]}
    old, new = _cpu_doc(times), _cpu_doc(times)
    code, text = _run(old, new, tmp_path)
    assert "limits moved" not in text and compare.drift(old, new) == []
    new["limits"]["sgemm_gflops"] = 100.0
    new["limits"]["read_gbps"] = 42.0                           # within 10%: not listed
    code, text = _run(old, new, tmp_path)
    assert compare.drift(old, new) == [("sgemm_gflops", 250.0, 100.0)]
    assert "limits moved between the runs (sgemm_gflops 250 -> 100, 0.40x)" in text
