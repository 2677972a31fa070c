"""`sharenet-fast info | verify | params` (sharenet_fast/cli.py): output, exit codes, failures."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__)))


def run(*argv):
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


def test_params_is_the_cs231n_table():
    code, text = run("params", "3x227x227", "--filters", "96", "--kernel", "11", "--stride", "4")
    assert code == 0
    assert "-> output 96x55x55" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and "sharing" not in line}
    assert set(rows) == set(sf.layers())             # one row per op-table layer kind
    assert "| 34,944 |" in rows["conv2d"] and "| 290,400 | 363 |" in rows["conv2d"]
    assert "| shared 1x1 |" in rows["conv2d"]
    assert "| 105,705,600 |" in rows["local2d"] and "| 3,025 |" in rows["local2d"]
    assert "| 139,776 |" in rows["tiled_conv2d"] and "| tiled 2x2 |" in rows["tiled_conv2d"]


def test_params_options_and_bad_input():
    code, text = run("params", "16x63x63", "--filters", "16", "--kernel", "9", "--tile", "3x5",
                     "--no-bias")
    assert code == 0 and "tiled 3x5" in text
    # 55 x 55 positions, 16 x 16 x 81 weights each, no bias
    assert f"| {55 * 55 * 16 * 16 * 81:,} |" in text
    code, text = run("params", "3x5x5", "--filters", "2", "--kernel", "7")
    assert code == 2 and "output size (P, Q) = (-1, -1) < 1" in text
    code, text = run("params", "3x9x8", "--filters", "2", "--kernel", "4x3", "--padding", "same")
    assert code == 0 and "-> output 2x9x8" in text
    code, text = run("params", "3x9x8", "--filters", "2", "--kernel", "3", "--padding", "same",
                     "--stride", "2")
    assert code == 2 and "padding='same' needs stride 1" in text
    with pytest.raises(SystemExit) as exc:
        run("params", "3x227", "--filters", "96", "--kernel", "11")
    assert exc.value.code == 2
    # groups: each neuron sees C / groups channels; depthwise 3 x 3 is 9 weights a neuron
    code, text = run("params", "32x56x56", "--filters", "64", "--kernel", "3", "--padding", "1",
                     "--groups", "32")
    assert code == 0 and "groups 32" in text
    assert f"| conv2d | shared 1x1 | 1 | {64 * 56 * 56:,} | 9 | {64 * 10:,} |" in text
    assert f"| local 56x56 | 3,136 | {64 * 56 * 56:,} | 9 | {3136 * 64 * 10:,} |" in text
    code, text = run("params", "32x56x56", "--filters", "32", "--kernel", "3", "--groups", "3")
    assert code == 2 and "groups=3 must divide" in text


def test_info_lists_versions_backends_and_threads():
    code, text = run("info")
    assert code == 0
    assert f"sharenet_fast {sf.__version__}" in text
    for name, status in sf.backends().items():
        assert f"  {name:11s} {status}" in text
    assert "CPU threads:" in text and "threading layer:" in text and "GPU:" in text


def test_verify_passes_on_the_cpu():
    code, text = run("verify", "--backend", "cpu", "--dtype", "float64", "--seed", "5")
    assert code == 0, text
    table = [line for line in text.splitlines() if line.startswith("| cpu |")]
    assert len(table) == (len(cli.VERIFY_SHAPES) * len(cli.LAYERS) + len(cli.PENALTY_SIZES)
                          + len(cli.NEIGHBOUR_VARIANTS) + 2)      # + average_banks' two
    assert all(line.endswith("| pass |") for line in table)
    assert sum("| soft_sharing_penalty | 70001 |" in line for line in table) == 1
    assert f"{len(table)} checks, 0 failed" in text


def test_verify_fails_when_a_backend_is_wrong(monkeypatch):
    """A backend whose local2d forward is off by a little must make verify exit 1."""
    cpu = sf.registry.get("cpu")
    real = cpu.local2d

    def wrong(x, weight, bias, g, grid):
        y = real(x, weight, bias, g, grid)
        y.reshape(-1)[0] += 1e-3
        return y
    monkeypatch.setattr(cpu, "local2d", wrong)
    code, text = run("verify", "--backend", "cpu", "--dtype", "float64", "--seed", "6")
    assert code == 1
    fails = [line for line in text.splitlines() if line.endswith("| FAIL |")]
    assert fails and all("| local2d |" in line for line in fails)
    assert "(!)" in fails[0]


def test_verify_fails_when_the_penalty_is_wrong(monkeypatch):
    monkeypatch.setattr(cli, "VERIFY_SHAPES", cli.VERIFY_SHAPES[1:2])   # the layers pass anyway
    cpu = sf.registry.get("cpu")
    real = cpu.soft_sharing_penalty
    monkeypatch.setattr(cpu, "soft_sharing_penalty",
                        lambda *a, **kw: real(*a, **kw) * (1 + 1e-4))
    code, text = run("verify", "--backend", "cpu", "--dtype", "float32", "--seed", "8")
    assert code == 1
    fails = [line for line in text.splitlines() if line.endswith("| FAIL |")]
    assert len(fails) == len(cli.PENALTY_SIZES)
    assert all("| soft_sharing_penalty |" in line for line in fails)


def test_verify_fails_when_the_neighbour_gradient_or_the_average_is_wrong(monkeypatch):
    monkeypatch.setattr(cli, "VERIFY_SHAPES", cli.VERIFY_SHAPES[1:2])
    cpu = sf.registry.get("cpu")
    real_n, real_a = cpu.neighbour_penalty, cpu.average_banks

    def wrong_n(weight, strength, metric, neighbourhood, wrap, grad_weight=None):
        p = real_n(weight, strength, metric, neighbourhood, wrap, grad_weight)
        if metric == "cosine" and grad_weight is not None:
            grad_weight.reshape(-1)[0] += 1e-2
        return p

    def wrong_a(weight, groups_of, out):
        res = real_a(weight, groups_of, out)
        res.reshape(-1)[-1] *= 1.01
        return res
    monkeypatch.setattr(cpu, "neighbour_penalty", wrong_n)
    monkeypatch.setattr(cpu, "average_banks", wrong_a)
    code, text = run("verify", "--backend", "cpu", "--dtype", "float64", "--seed", "9")
    assert code == 1
    fails = [line for line in text.splitlines() if line.endswith("| FAIL |")]
    assert len(fails) == 2 + 2, fails               # the two cosine variants, both averages
    assert all("| neighbour_penalty | cosine" in f or "| average_banks |" in f for f in fails)


def test_verify_reports_a_crashing_backend(monkeypatch):
    cpu = sf.registry.get("cpu")

    def boom(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(cpu, "conv2d_bias_grad", boom)
    code, text = run("verify", "--backend", "cpu", "--dtype", "float32", "--seed", "7")
    assert code == 1 and "kernel exploded" in text


def test_verify_unavailable_backend_is_an_error():
    missing = [n for n, s in sf.backends().items() if s != "available"]
    if not missing:
        pytest.skip("every backend is available here")
    code, text = run("verify", "--backend", missing[0])
    assert code == 1 and "not available" in text


def test_module_entry_point():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "sharenet_fast", "params", "3x32x32",
                           "--filters", "8", "--kernel", "3", "--padding", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-> output 8x32x32" in proc.stdout
    assert np.isfinite(float(len(proc.stdout)))
