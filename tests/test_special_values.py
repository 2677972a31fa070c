"""Non-finite values propagate like the oracle's: the kernels compile without nnan/ninf
(config.FASTMATH), so NaN and Inf must come out where the float64 oracle puts them."""
import numpy as np
import pytest

import sharenet_fast as sf
from _support import BACKENDS, DTYPE_IDS, DTYPES, SHAPES_BY_ID, make_inputs
from sharenet_fast import reference


def _same_nonfinite(out, ref):
    out = np.asarray(out, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref), err_msg="NaN positions")
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref), err_msg="+inf positions")
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref), err_msg="-inf positions")


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_input_propagates_through_forward(backend, dtype, value):
    case = SHAPES_BY_ID["pad1_3x3"]
    d = make_inputs(case, dtype, seed=21)
    d.x[1, 2, 4, 5] = value
    y = sf.conv2d(d.x, d.w, d.b, backend=backend, **case.kw)
    ref = reference.conv2d(d.x, d.w, d.b, **case.kw)
    assert not np.isfinite(ref).all()
    _same_nonfinite(y, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_grad_of_inf_is_inf(backend, dtype):
    """One +inf in grad_out at [n, k, 0, 0]: the bias gradient of channel k is +inf, not NaN."""
    case = SHAPES_BY_ID["pad1_3x3"]
    d = make_inputs(case, dtype, seed=22)
    d.dy[1, 2, 0, 0] = np.inf
    db = sf.conv2d_backward(d.dy, d.x, d.w, needs="bias", backend=backend, **case.kw).bias
    ref = reference.conv2d_bias_grad(d.dy)
    assert np.isposinf(ref[2])
    _same_nonfinite(db, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_grad_of_inf_inside_the_plane_is_inf(backend, dtype):
    """The same +inf away from the first element of the (n, k) plane."""
    case = SHAPES_BY_ID["pad1_3x3"]
    d = make_inputs(case, dtype, seed=22)
    d.dy[1, 2, 3, 4] = np.inf
    db = sf.conv2d_backward(d.dy, d.x, d.w, needs="bias", backend=backend, **case.kw).bias
    _same_nonfinite(db, reference.conv2d_bias_grad(d.dy))
