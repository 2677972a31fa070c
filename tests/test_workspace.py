"""The CPU result pool (sharenet_fast/cpu/_workspace.py, result()): a pooled buffer is reused
only once every view of the result that held it is gone, results alive together never share
memory, and the pool keeps no more than config.RESULT_POOL_BYTES."""
import gc
import importlib

import numpy as np
import pytest

import sharenet_fast as sf
from sharenet_fast import config

ws = importlib.import_module("sharenet_fast.cpu._workspace")
BIG = (config.RESULT_POOL_MIN_BYTES // 4 + 1024,)          # float32, just over the threshold


@pytest.fixture(autouse=True)
def _empty_pool():
    ws.clear_pool()
    yield
    ws.clear_pool()


def test_buffer_returns_only_when_the_last_view_dies():
    a = ws.result(BIG, np.float32)
    a[:] = 1.5
    view = a[10:20]
    ptr = a.ctypes.data
    del a
    gc.collect()
    assert ws.pool_bytes() == 0                     # the view still uses the buffer
    b = ws.result(BIG, np.float32)
    assert b.ctypes.data != ptr and (view == 1.5).all()
    del view
    gc.collect()
    assert ws.pool_bytes() > 0
    c = ws.result(BIG, np.float32)                  # now the buffer is reused
    assert c.ctypes.data == ptr and ws.pool_bytes() == 0
    assert c.ctypes.data % ws.ALIGN == 0 and b.ctypes.data % ws.ALIGN == 0
    assert c.flags.c_contiguous and c.flags.writeable and c.dtype == np.float32


def test_small_results_are_plain_arrays_and_the_pool_is_bounded(monkeypatch):
    small = ws.result((10, 10), np.float64)
    assert small.ctypes.data % ws.ALIGN == 0 and small.flags.c_contiguous
    del small
    gc.collect()
    assert ws.pool_bytes() == 0                     # small results are not pooled
    monkeypatch.setattr(ws, "RESULT_POOL_BYTES", 4 * BIG[0] + 100)
    arrays = [ws.result(BIG, np.float32) for _ in range(3)]
    del arrays
    gc.collect()
    assert ws.pool_bytes() == 4 * BIG[0]            # one kept, the others freed: the cap


def test_local_weight_gradients_alive_together_do_not_share_memory():
    """Two backward results held at once, each right; a third after one is dropped reuses
    its memory and is still right (every element written: the pool's buffers are stale)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 46, 46), dtype=np.float32)
    P = Q = 44
    w = rng.standard_normal((P, Q, 16, 16, 3, 3), dtype=np.float32)   # 18 MB: pooled
    assert w.nbytes >= config.RESULT_POOL_MIN_BYTES
    dy1, dy2 = (rng.standard_normal((2, 16, P, Q), dtype=np.float32) for _ in range(2))
    want1 = sf.local2d_backward(dy1, x, w, needs=("weight",), backend="reference").weight
    want2 = sf.local2d_backward(dy2, x, w, needs=("weight",), backend="reference").weight
    g1 = sf.local2d_backward(dy1, x, w, needs=("weight",)).weight
    g2 = sf.local2d_backward(dy2, x, w, needs=("weight",)).weight
    assert g1.ctypes.data != g2.ctypes.data
    for got, want in ((g1, want1), (g2, want2)):
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-5
    ptr = g1.ctypes.data
    del g1
    gc.collect()
    g3 = sf.local2d_backward(dy2, x, w, needs=("weight",)).weight
    assert g3.ctypes.data == ptr
    assert np.linalg.norm(g3 - want2) / np.linalg.norm(want2) < 1e-5


def test_the_pool_drops_the_least_recently_returned_beyond_its_cap(monkeypatch):
    """A run that moves from one layer size to another gets the new size pooled: the old
    size's buffers go first."""
    monkeypatch.setattr(ws, "RESULT_POOL_BYTES", 5 * BIG[0])
    old = [ws.result(BIG, np.float32) for _ in range(2)]          # 2 x 4*BIG bytes: one fits
    del old
    gc.collect()
    assert ws.pool_bytes() == 4 * BIG[0]
    new = ws.result((BIG[0] + 16,), np.float32)                   # another size: a miss
    ptr = new.ctypes.data
    del new
    gc.collect()
    assert ws.pool_bytes() == 4 * (BIG[0] + 16)                   # the old one was dropped
    assert ws.result((BIG[0] + 16,), np.float32).ctypes.data == ptr
