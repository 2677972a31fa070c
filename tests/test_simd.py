"""The CPU outer-product microkernel (sharenet_fast/cpu/_simd.py) against a float64 NumPy
product: every register tile the kernels use, both dtypes, split reductions with and without a
partial last group, edge tiles (fewer rows / columns than the tile), accumulate (beta), the
per-row addend D, strided output columns, and poisoned memory around the output so a store
out of place fails."""
import numpy as np
import pytest
from numba import njit

from sharenet_fast import config
from sharenet_fast.cpu._simd import (add_run, copy_run, copy_run_over, lanes, outer_product,
                                     stream_copy)

POISON = 1e30


@pytest.fixture(scope="module")
def kernels():
    cache = {}

    def get(MR, NV, U, PF=0):
        key = (MR, NV, U, PF)
        if key not in cache:
            @njit
            def call(A, a0, lda, ldaj, B, b0, ldb, nk, ntail, C, c0, ldc, ldcn, nrows, ncols,
                     beta, D, d0, add_d, pf):
                outer_product(MR, NV, U, PF, 0, A, a0, lda, ldaj, B, b0, ldb, nk, ntail, C, c0,
                              ldc, ldcn, nrows, ncols, beta, D, d0, add_d, pf)
            cache[key] = call
        return cache[key]
    return get


TILES = sorted({(8, 1, 1), (4, 2, 1), (6, 4, 1), (8, 3, 1), (4, 4, 1), config.FWD_TILE + (1,),
                config.WGRAD_TILE + (1,), config.DGRAD_TILE + (1,),
                (config.FWD_TILE_SPLIT[0], 1, 2), (8, 1, 4), (8, 1, 8)})


def _case(rng, dt, MR, NV, U, nrows, ncols, steps, ldcn, beta, add_d):
    VL = lanes(np.dtype(dt).itemsize)
    if U > 1 and VL % U:
        pytest.skip(f"{VL} lanes do not split {U} ways")
    G = VL // U if U > 1 else NV * VL
    nk, ntail = divmod(steps, U)
    # A: rows of `steps` values at stride lda, unit stride along the reduction; an offset a0
    lda, a0 = steps + 3, 5
    A = rng.standard_normal(a0 + MR * lda + 8).astype(dt)
    # B: steps x G values (row stride ldb >= G), then one zero-padded group for the tail
    ldb = (VL if U > 1 else G + 7)
    b0 = 2
    rowsB = nk + (1 if ntail else 0)
    B = np.zeros(b0 + rowsB * ldb + VL, dt)
    Bm = rng.standard_normal((steps, G)).astype(dt)
    for t in range(steps):
        j, u = divmod(t, U)
        off = b0 + j * ldb + (u * G if U > 1 else 0)
        B[off:off + G] = Bm[t]
    D = rng.standard_normal(MR + 4).astype(dt)
    ldc = (G + 5) * ldcn
    c0 = 3
    C = np.full(c0 + MR * ldc + G * ldcn + 16, POISON, dt)
    start = rng.standard_normal((MR, G)).astype(dt)
    idx = c0 + np.arange(nrows)[:, None] * ldc + np.arange(ncols)[None, :] * ldcn
    if beta:
        C[idx] = start[:nrows, :ncols]
    Am = np.stack([A[a0 + i * lda:a0 + i * lda + steps] for i in range(MR)])
    want = Am.astype(np.float64) @ Bm.astype(np.float64)
    want = want[:nrows, :ncols]
    if beta:
        want = want + start[:nrows, :ncols]
    if add_d:
        want = want + D[1:1 + nrows, None]
    return (A, a0, lda, 1 if U == 1 else U, B, b0, ldb, nk, ntail, C, c0, ldc, ldcn, nrows,
            ncols, beta, D, 1, add_d, a0), C, idx, want


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("MR,NV,U", TILES)
@pytest.mark.parametrize("edge", ["full", "rows", "cols", "both"])
@pytest.mark.parametrize("ldcn,beta,add_d", [(1, False, False), (1, True, True), (3, True, False),
                                             (2, False, True)])
def test_microkernel_matches_float64(kernels, dt, MR, NV, U, edge, ldcn, beta, add_d):
    rng = np.random.default_rng(hash((MR, NV, U, edge, ldcn, beta, add_d)) % 2**32)
    VL = lanes(np.dtype(dt).itemsize)
    G = VL // U if U > 1 else NV * VL
    nrows = MR - 1 if edge in ("rows", "both") and MR > 1 else MR
    ncols = max(1, G - 3) if edge in ("cols", "both") else G
    steps = 37 if U > 1 else 29      # U > 1: a partial last group unless U divides 37
    args, C, idx, want = _case(rng, dt, MR, NV, U, nrows, ncols, steps, ldcn, beta, add_d)
    kernels(MR, NV, U, 1)(*args)
    got = C[idx].astype(np.float64)
    tol = 1e-5 if dt == np.float32 else 1e-12
    assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want)
    untouched = np.ones(C.shape, bool)
    untouched[idx] = False
    assert (C[untouched] == POISON).all(), "the microkernel wrote outside its tile"


def test_split_reduction_without_tail(kernels):
    """U divides the steps: no partial group, and B needs no padding row."""
    rng = np.random.default_rng(7)
    VL = lanes(4)
    U = 2
    args, C, idx, want = _case(rng, np.float32, 8, 1, U, 8, VL // U, 40, 1, False, False)
    kernels(8, 1, U)(*args)
    assert np.allclose(C[idx], want, rtol=1e-5, atol=1e-5)


def test_zero_steps_gives_the_addends(kernels):
    """nk = 0: C = beta*C + D, the accumulators start at zero."""
    rng = np.random.default_rng(3)
    args, C, idx, want = _case(rng, np.float64, 4, 2, 1, 4, 5, 0, 1, True, True)
    kernels(4, 2, 1)(*args)
    assert np.allclose(C[idx], want)


def test_tile_must_be_compile_time_constants():
    from numba.core.errors import TypingError

    @njit
    def call(mr, A):
        outer_product(mr, 1, 1, 0, 0, A, 0, 1, 1, A, 0, 1, 1, 0, A, 0, 1, 1, 1, 1, False, A, 0,
                      False, 0)
    with pytest.raises(TypingError, match="compile-time"):
        call(4, np.zeros(64, np.float32))


def test_split_reduction_needs_one_vector():
    from numba.core.errors import TypingError

    @njit
    def call(A):
        outer_product(4, 2, 2, 0, 0, A, 0, 1, 1, A, 0, 1, 1, 0, A, 0, 1, 1, 1, 1, False, A, 0,
                      False, 0)
    with pytest.raises(TypingError, match="NV = 1"):
        call(np.zeros(64, np.float32))


def test_vector_width_follows_the_numba_target(monkeypatch):
    monkeypatch.setenv("SHARENET_FAST_VECTOR_BYTES", "48")
    with pytest.raises(ValueError, match="SHARENET_FAST_VECTOR_BYTES"):
        config._target_vector_bytes()
    monkeypatch.setenv("SHARENET_FAST_VECTOR_BYTES", "32")
    assert config._target_vector_bytes() == 32
    monkeypatch.delenv("SHARENET_FAST_VECTOR_BYTES")
    from numba.core import config as nconfig
    monkeypatch.setattr(nconfig, "CPU_FEATURES", "+avx,+avx2,+fma")
    assert config._target_vector_bytes() == 32
    monkeypatch.setattr(nconfig, "CPU_FEATURES", "+avx2,+avx512f,+fma")
    assert config._target_vector_bytes() == 64
    monkeypatch.setattr(nconfig, "CPU_FEATURES", "")
    monkeypatch.setattr(nconfig, "CPU_NAME", "haswell")
    assert config._target_vector_bytes() == 32
    monkeypatch.setattr(nconfig, "CPU_NAME", "znver4")
    assert config._target_vector_bytes() == 64


@njit
def _stream_copy(dst, d0, src, s0, n):
    stream_copy(dst, d0, src, s0, n)


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_stream_copy_writes_exactly_the_run(dt):
    """Every destination alignment (the unaligned head, the vector body with non-temporal
    stores, the scalar tail) and run lengths around the vector length, with poison on both
    sides of the run."""
    rng = np.random.default_rng(3)
    VL = lanes(np.dtype(dt).itemsize)
    src = rng.standard_normal(4 * VL + 64).astype(dt)
    for d0 in range(VL + 1):
        for n in (0, 1, VL - 1, VL, VL + 1, 3 * VL + 2):
            dst = np.full(5 * VL + 64, POISON, dt)
            _stream_copy(dst, d0, src, 5, n)
            np.testing.assert_array_equal(dst[d0:d0 + n], src[5:5 + n])
            assert (dst[:d0] == POISON).all() and (dst[d0 + n:] == POISON).all(), (d0, n)


@njit
def _copy_run(dst, d0, src, s0, n):
    copy_run(dst, d0, src, s0, n)


@njit
def _add_run(dst, d0, src, s0, n):
    add_run(dst, d0, src, s0, n)


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.uint16], ids=["f32", "f64", "u16"])
def test_copy_and_add_run_touch_exactly_the_run(dt):
    """Run lengths 0 .. a few vectors at every offset: the whole vectors and the masked rest
    write exactly [d0, d0 + n) (poison on both sides stays), copying or adding."""
    rng = np.random.default_rng(4)
    VL = lanes(np.dtype(dt).itemsize)
    src = (rng.integers(1, 1000, 4 * VL + 64) if dt == np.uint16
           else rng.standard_normal(4 * VL + 64)).astype(dt)
    poison = np.array(7777 if dt == np.uint16 else POISON).astype(dt)
    for d0 in (0, 1, VL - 1):
        for n in (0, 1, VL - 1, VL, VL + 1, 3 * VL + 2):
            dst = np.full(5 * VL + 64, poison, dt)
            _copy_run(dst, d0, src, 3, n)
            np.testing.assert_array_equal(dst[d0:d0 + n], src[3:3 + n])
            assert (dst[:d0] == poison).all() and (dst[d0 + n:] == poison).all(), (d0, n)
            if dt == np.uint16:
                continue
            base = rng.standard_normal(dst.size).astype(dt)
            acc = base.copy()
            _add_run(acc, d0, src, 3, n)
            want = base.copy()
            want[d0:d0 + n] += src[3:3 + n]
            np.testing.assert_array_equal(acc, want)


@njit
def _copy_run_over(dst, d0, src, s0, n):
    copy_run_over(dst, d0, src, s0, n)


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.uint16], ids=["f32", "f64", "u16"])
def test_copy_run_over_copies_the_run_and_overruns_by_less_than_a_vector(dt):
    """copy_run_over: [d0, d0 + n) equals the source run; what it writes past it is the
    source's continuation (whole vectors: 16 or 32 bytes for a short run, else full
    vectors), never more than a vector less one element, and nothing before d0."""
    rng = np.random.default_rng(5)
    esize = np.dtype(dt).itemsize
    VL = lanes(esize)
    src = (rng.integers(1, 1000, 6 * VL) if dt == np.uint16
           else rng.standard_normal(6 * VL)).astype(dt)
    poison = np.array(7777 if dt == np.uint16 else POISON).astype(dt)
    for d0 in (0, 1, VL - 1):
        for n in range(1, 3 * VL + 2):
            dst = np.full(5 * VL, poison, dt)
            _copy_run_over(dst, d0, src, 3, n)
            np.testing.assert_array_equal(dst[d0:d0 + n], src[3:3 + n])
            assert (dst[:d0] == poison).all(), (d0, n)
            widths = [w for w in (16 // esize, 32 // esize) if w < VL and n <= w]
            W = widths[0] if widths else -(-n // VL) * VL
            assert W - n < VL
            np.testing.assert_array_equal(dst[d0:d0 + W], src[3:3 + W])
            assert (dst[d0 + W:] == poison).all(), (d0, n, W)
