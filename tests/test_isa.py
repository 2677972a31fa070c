"""bench/isa.py: the AVX2 environment of `python -m bench --isa avx2` and of CI's AVX2 step
really compiles for AVX2 only (Numba: no zmm register in a jitted float32 loop; oneDNN: an avx2
kernel for torch's conv2d), each checked in a fresh process (the libraries read the variables
when they load); and `--isa avx2` re-runs the benchmark in such a child."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import isa  # noqa: E402
from bench.report import build as report  # noqa: E402

ASM = r"""
import re
import numpy as np
from numba import njit

@njit(fastmath=True)
def axpy_sum(a, b, c):
    t = np.float32(0.0)
    for i in range(a.shape[0]):
        c[i] += a[i] * b[i]
        t += c[i]
    return t

x = np.ones(4096, np.float32)
axpy_sum(x, x, x.copy())
asm = "".join(axpy_sum.inspect_asm().values())
print(len(re.findall(r"%zmm\d", asm)), len(re.findall(r"%ymm\d", asm)))
"""


def _registers(env):
    """(zmm, ymm) register mentions in the assembly of a jitted float32 loop under `env`."""
    out = subprocess.run([sys.executable, "-c", ASM], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    zmm, ymm = map(int, out.stdout.split())
    return zmm, ymm


def _host_has_avx512():
    import llvmlite.binding as ll

    return "+avx512f" in ll.get_host_cpu_features().flatten().split(",")


def _has_avx2():
    import llvmlite.binding as ll

    return "+avx2" in ll.get_host_cpu_features().flatten().split(",")


pytestmark = pytest.mark.skipif(not _has_avx2(), reason="the host has no AVX2")


def test_avx2_env_compiles_numba_without_avx512():
    zmm, ymm = _registers(isa.env(isa.AVX2))
    assert zmm == 0 and ymm > 0            # vectorised, 256 bits wide


@pytest.mark.skipif(not _host_has_avx512(), reason="the host has no AVX-512")
def test_cpu_name_alone_keeps_the_hosts_avx512():
    """The control: NUMBA_CPU_NAME=haswell alone keeps the host's features (AVX-512 included)
    and, without the host's own preference for 256-bit vectors, the same loop uses zmm; so the
    check above can see them, and the empty NUMBA_CPU_FEATURES is what removes them."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell")
    env.pop("NUMBA_CPU_FEATURES", None)
    zmm, _ = _registers(env)
    assert zmm > 0


def test_avx2_env_limits_onednn():
    pytest.importorskip("torch")
    code = ("import torch; x = torch.ones(2, 16, 20, 20); w = torch.ones(32, 16, 3, 3); "
            "torch.nn.functional.conv2d(x, w)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(isa.env(isa.AVX2), ONEDNN_VERBOSE="1"), timeout=300)
    assert out.returncode == 0, out.stderr
    convs = [line for line in out.stdout.splitlines() if ",convolution," in line
             and ",exec," in line]
    assert convs and all("avx2" in line and "avx512" not in line for line in convs), convs


def test_env_and_active():
    base = {"XLA_FLAGS": "--xla_dump_to=/tmp/x", "PATH": "/bin"}
    env = isa.env(isa.AVX2, base)
    assert env["NUMBA_CPU_NAME"] == "haswell" and env["NUMBA_CPU_FEATURES"] == ""
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["PATH"] == "/bin"
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", "--xla_cpu_max_isa=AVX2"]
    assert isa.active(isa.AVX2, env) and not isa.active(isa.AVX2, base)
    assert isa.env(isa.AVX2, env) == env                 # idempotent
    assert isa.env(isa.NATIVE, base) == base and isa.active(isa.NATIVE, base)
    assert base["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"            # a copy was changed


def test_cli_prints_and_runs_with_the_env():
    out = subprocess.run([sys.executable, "-m", "bench.isa", "avx2"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "NUMBA_CPU_FEATURES=\n" in out.stdout
    code = "import os; print(os.environ['NUMBA_CPU_NAME'], repr(os.environ['NUMBA_CPU_FEATURES']))"
    out = subprocess.run([sys.executable, "-m", "bench.isa", "avx2", sys.executable, "-c", code],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["haswell", "''"]


def test_bench_isa_avx2_reruns_in_a_child(monkeypatch, capsys):
    """--isa avx2 runs `python -m bench` with the same arguments in a child that has the AVX2
    environment (and that child, finding it, runs the benchmark itself)."""
    calls = []
    monkeypatch.setattr(report.subprocess, "call",
                        lambda cmd, env, cwd: calls.append((cmd, env)) or 0)
    for name in isa.VARS[isa.AVX2]:
        monkeypatch.delenv(name, raising=False)
    argv = ["--isa", "avx2", "--shapes", "cifar_5x5", "--repeat", "1"]
    assert report.main(argv) == 0
    (cmd, env), = calls
    assert cmd == [sys.executable, "-m", "bench", *argv] and isa.active(isa.AVX2, env)
    assert env["SHARENET_FAST_CACHE"] == "1"                    # bench/precompile.py's cache
    assert "running the benchmark in a child process" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.parse_args(["--gpu", "--isa", "avx2"])


def test_native_drops_an_inherited_avx2_setting():
    """A machine that sets OPENBLAS_CORETYPE=Haswell for every process (seen on a Zen 5 VM)
    would hold NumPy's sgemm, the native run's FLOP roof, to AVX2: the native environment
    drops it, and keeps another core type the user chose."""
    base = {"OPENBLAS_CORETYPE": "Haswell", "PATH": "/bin"}
    assert not isa.active(isa.NATIVE, base)
    env = isa.env(isa.NATIVE, base)
    assert env == {"PATH": "/bin"} and isa.active(isa.NATIVE, env)
    chosen = {"OPENBLAS_CORETYPE": "SkylakeX"}
    assert isa.active(isa.NATIVE, chosen) and isa.env(isa.NATIVE, chosen) == chosen
