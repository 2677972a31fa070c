"""bench/compare.py: regressions beyond the spread of the samples, both JSON formats."""
import io
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import compare  # noqa: E402


def _cpu_doc(times, processor="AMD EPYC"):
    """A CPU-report JSON: {(shape, layer, pass, impl): samples}."""
    return {"machine": {"processor": processor, "cpu_count": 2},
            "results": [dict(shape=s, layer=l, **{"pass": p}, impl=i, samples_s=list(v))
                        for (s, l, p, i), v in times.items()]}


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
    key, peer = ("vgg_3x3", "local", "forward", "ours"), ("vgg_3x3", "local", "forward", "torch")
    old = _cpu_doc({key: _noisy(rng, 0.010), peer: _noisy(rng, 0.050)})
    new = _cpu_doc({key: _noisy(rng, 0.013), peer: _noisy(rng, 0.050)})
    code, text = _run(old, new, tmp_path)
    assert code == 1
    assert "| vgg_3x3 | local | forward | ours | 10.0" in text and "SLOWER (regression)" in text
    assert "1 regressions of ours" in text


def test_noise_and_peer_slowdowns_are_not_regressions(tmp_path):
    rng = np.random.default_rng(1)
    key, peer = ("cifar_5x5", "shared", "backward", "ours"), ("cifar_5x5", "shared", "backward",
                                                              "torch")
    old = _cpu_doc({key: _noisy(rng, 0.010, spread=0.05), peer: _noisy(rng, 0.02)})
    new = _cpu_doc({key: _noisy(rng, 0.0102, spread=0.05), peer: _noisy(rng, 0.04)})
    code, text = _run(old, new, tmp_path, "--all")
    assert code == 0, text
    assert "| ours |" in text and "| same |" in text       # listed with --all, within spread
    assert "| torch |" in text and "slower" in text        # the peer got slower: not ours


def test_judge_needs_both_size_and_separation():
    rng = np.random.default_rng(2)
    base = _noisy(rng, 1.0, n=15, spread=0.01)
    assert compare.judge(base, base * 1.2) == "slower"
    assert compare.judge(base, base / 1.2) == "faster"
    assert compare.judge(base, base * 1.02) == "same"                 # under the threshold
    wide = _noisy(rng, 1.0, n=15, spread=0.5)
    assert compare.judge(wide, wide * 1.1) == "same"                  # inside the noise


def test_gpu_rows_and_missing_keys_and_machines(tmp_path):
    def gpu_doc(ms):
        return {"device": "NVIDIA H100", "rows": [
            dict(shape="alexnet_conv1", layer="local", pass_="forward", backend="cupy",
                 ours_samples=[ms, ms * 1.01, ms * 0.99, ms], peer_samples=[5.0, 5.1, 4.9]),
            dict(shape="alexnet_conv1", pass_="weight_grad_modes", backend="cupy",
                 atomic_samples=[1.0, 1.01, 0.99], deterministic_samples=[1.1, 1.11, 1.09])]}
    t = compare.timings(gpu_doc(2.0))
    assert t[("alexnet_conv1", "local", "forward", "cupy")][0] == 2.0e-3
    assert ("alexnet_conv1", "shared", "weight_grad deterministic", "cupy") in t
    code, text = _run(gpu_doc(2.0), gpu_doc(1.0), tmp_path)
    assert code == 0 and "faster" in text
    cpu = _cpu_doc({("x", "shared", "forward", "ours"): [1.0, 1.0, 1.0]})
    code, text = _run(cpu, gpu_doc(1.0), tmp_path)
    assert "machines differ" in text and "only in old: x/shared/forward/ours" in text
