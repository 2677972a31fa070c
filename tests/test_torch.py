"""sharenet_fast.torch: custom operators, functional forms and modules against pure-PyTorch
references (F.conv2d; unfold + einsum for the untied layers; the tiled layer as a local layer
whose banks repeat), gradcheck in float64, opcheck for every operator, torch.compile with no
graph break, and the boundary (zero-copy views, strides, needs, errors). Skips without torch."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import sharenet_fast as sf  # noqa: E402
import sharenet_fast.torch as sft  # noqa: E402
from sharenet_fast import api, optable  # noqa: E402

LAYERS = tuple(optable.LAYERS)


# ----------------------------------------------------------------------- pure-PyTorch references
def _local_ref(x, w, b, stride, padding, dilation):
    """Locally connected layer by unfold + einsum: w (P, Q, K, C, R, S)."""
    P, Q, K, C, R, S = w.shape
    cols = F.unfold(x, (R, S), dilation=dilation, padding=padding, stride=stride)  # (N, CRS, L)
    y = torch.einsum("ntl,lkt->nkl", cols, w.reshape(P * Q, K, C * R * S))
    y = y.reshape(x.shape[0], K, P, Q)
    if b is not None:
        y = y + b.permute(2, 0, 1)
    return y


def _expand_tiles(w, b, P, Q):
    """A tiled layer's banks repeated over the output grid: the local layer it equals."""
    TP, TQ = w.shape[:2]
    ip, iq = torch.arange(P) % TP, torch.arange(Q) % TQ
    wl = w[ip[:, None], iq[None, :]]
    bl = None if b is None else b[ip[:, None], iq[None, :]]
    return wl, bl


def reference(op, x, w, b, stride, padding, dilation):
    if op == "conv2d":
        return F.conv2d(x, w, b, stride, padding, dilation)
    g = sf.ConvGeometry.make(x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[-4],
                             w.shape[-2], w.shape[-1], stride, padding, dilation)
    if op == "tiled_conv2d":
        w, b = _expand_tiles(w, b, g.P, g.Q)
    return _local_ref(x, w, b, stride, padding, dilation)


FUNCS = {"conv2d": sft.conv2d, "tiled_conv2d": sft.tiled_conv2d, "local2d": sft.local2d}


class Shape:
    def __init__(self, id, N, C, H, W, K, R, S, stride=1, padding=0, dilation=1):
        self.id, self.N, self.C, self.H, self.W, self.K, self.R, self.S = (id, N, C, H, W, K,
                                                                           R, S)
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def geometry(self):
        return sf.ConvGeometry.make(self.N, self.C, self.H, self.W, self.K, self.R, self.S,
                                    self.stride, self.padding, self.dilation)

    def tensors(self, op, dtype, bias=True, seed=0, tiles=(2, 2)):
        g = torch.Generator().manual_seed(seed)
        geo = self.geometry()
        grid = {"conv2d": (), "tiled_conv2d": tiles, "local2d": (geo.P, geo.Q)}[op]
        x = torch.randn(self.N, self.C, self.H, self.W, generator=g, dtype=dtype)
        w = torch.randn(*grid, self.K, self.C, self.R, self.S, generator=g, dtype=dtype)
        b = torch.randn(*grid, self.K, generator=g, dtype=dtype) if bias else None
        return x, w, b

    @property
    def kw(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


SHAPES = [
    Shape("plain", 2, 3, 7, 8, 4, 3, 3),
    Shape("stride_pad_dil_nonsquare", 2, 3, 11, 9, 5, 3, 2, stride=(2, 1), padding=(1, 2),
          dilation=(1, 2)),
    Shape("batch1_stride4_k5", 1, 2, 17, 15, 3, 5, 5, stride=4),
    Shape("c16_fills_vectors", 2, 16, 6, 7, 10, 3, 2, padding=1),
]
SHAPE_IDS = [s.id for s in SHAPES]


def _close(a, b, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    err = (torch.linalg.vector_norm(a.double() - b.double())
           / torch.linalg.vector_norm(b.double())).item()
    assert err <= tol, f"rel err {err:.3g} > {tol:g}"


# ------------------------------------------------------------------------ against references
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("op", LAYERS)
def test_forward_and_grads_match_pytorch(op, shape, dtype):
    x, w, b = shape.tensors(op, dtype)
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    refs = [t.clone().requires_grad_() for t in (x, w, b)]
    y = FUNCS[op](*ours, **shape.kw)
    y_ref = reference(op, *refs, **shape.kw)
    _close(y, y_ref, dtype)
    dy = torch.randn_like(y_ref)
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    for mine, theirs in zip(ours, refs):
        _close(mine.grad, theirs.grad, dtype)


@pytest.mark.parametrize("op", LAYERS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("wants", [(True, True, True), (True, False, False),
                                   (False, True, False), (False, False, True)],
                         ids=["all", "x", "w", "b"])
def test_gradcheck_float64(op, bias, wants):
    if not bias and wants == (False, False, True):
        pytest.skip("no bias to differentiate")
    shape = Shape("tiny", 2, 2, 5, 6, 3, 2, 3, stride=(1, 2), padding=(1, 0))
    x, w, b = shape.tensors(op, torch.float64, bias=bias)
    args = [x.requires_grad_(wants[0]), w.requires_grad_(wants[1])]
    args.append(None if b is None else b.requires_grad_(wants[2]))
    assert torch.autograd.gradcheck(lambda *a: FUNCS[op](*a, **shape.kw), tuple(args))


def test_penalty_value_and_gradcheck():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    p = sft.soft_sharing_penalty(a, b, 0.7)
    assert p.shape == () and p.dtype == torch.float64
    _close(p, 0.35 * ((a - b) ** 2).sum(), torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: sft.soft_sharing_penalty(a, b, 0.7), (a, b))
    a32 = a.detach().float().requires_grad_()
    p32 = sft.soft_sharing_penalty(a32, b.detach().float(), 2.0)   # b a constant
    p32.backward()
    _close(a32.grad, 2.0 * (a32 - b.float()).detach(), torch.float32)


# ------------------------------------------------------------------------------- operators
def _op_samples(op, dtype=torch.float32):
    shape = SHAPES[1]
    x, w, b = (t.to(dtype) for t in shape.tensors(op, torch.float32))
    geo = sft._modules._conv_args(shape.stride, shape.padding, shape.dilation)   # groups 1
    y = FUNCS[op](x, w, b, **shape.kw)
    dy = torch.randn_like(y)
    fwd, bwd, into = sft.OPS[op]
    return [
        (fwd, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *geo, False, "cpu")),
        (fwd, (x.detach(), w.detach(), None, *geo, True, "auto")),
        (bwd, (dy, x.detach(), w.detach(), *geo, True, True, True, False, "cpu")),
        (bwd, (dy, x.detach(), w.detach(), *geo, False, True, False, False, "cpu")),
        (into, (dy, x.detach(), w.detach(), torch.randn_like(w), torch.randn_like(b), *geo,
                True, False, "cpu")),
        (into, (dy, x.detach(), w.detach(), torch.randn_like(w), None, *geo, False, False,
                "cpu")),
    ]


@pytest.mark.parametrize("op", LAYERS)
def test_opcheck_every_layer_operator(op):
    for fn, args in _op_samples(op):
        torch.library.opcheck(fn, args)


def test_opcheck_penalty_operators():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 6, generator=g, requires_grad=True)
    b = torch.randn(4, 6, generator=g, requires_grad=True)
    torch.library.opcheck(torch.ops.sharenet_fast.soft_sharing_penalty, (a, b, 0.5, "cpu"))
    torch.library.opcheck(torch.ops.sharenet_fast.soft_sharing_penalty_backward,
                          (torch.tensor(1.5), a.detach(), b.detach(), 0.5, True, False, "cpu"))


@pytest.mark.parametrize("op", LAYERS)
def test_backward_into_adds_like_grad_weight(op):
    """The mutating operator adds into its buffers (hard sharing), as the NumPy API does."""
    shape = SHAPES[0]
    x, w, b = shape.tensors(op, torch.float64)
    geo = sft._modules._conv_args(shape.stride, shape.padding, shape.dilation)
    y = FUNCS[op](x, w, b, **shape.kw)
    dy = torch.randn_like(y)
    gw0, gb0 = torch.randn_like(w), torch.randn_like(b)
    gw, gb = gw0.clone(), gb0.clone()
    dx = sft.OPS[op][2](dy, x, w, gw, gb, *geo, True, False, "cpu")
    want = getattr(sf, op + "_backward")(dy.numpy(), x.numpy(), w.numpy(), **shape.kw)
    _close(dx, torch.from_numpy(want.input), torch.float64)
    _close(gw - gw0, torch.from_numpy(want.weight), torch.float64)
    _close(gb - gb0, torch.from_numpy(want.bias), torch.float64)


# --------------------------------------------------------------------------------- modules
def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        sft.Conv2d(3, 4, 3, padding="same", dtype=dtype), torch.nn.ReLU(),
        sft.TiledConv2d(4, 5, 3, tiles=(2, 3), stride=2, padding=1, dtype=dtype), torch.nn.Tanh(),
        sft.LocallyConnected2d(5, 6, 2, input_size=(5, 6), dtype=dtype), torch.nn.Flatten(),
        torch.nn.Linear(6 * 4 * 5, 3, dtype=dtype))


def test_modules_shapes_init_repr_and_state_dict():
    m = _model()
    conv, tiled, local = m[0], m[2], m[4]
    assert conv.weight.shape == (4, 3, 3, 3) and conv.bias.shape == (4,)
    assert tiled.weight.shape == (2, 3, 5, 4, 3, 3) and tiled.bias.shape == (2, 3, 5)
    assert local.weight.shape == (4, 5, 6, 5, 2, 2) and local.bias.shape == (4, 5, 6)
    bound = 1 / np.sqrt(5 * 2 * 2)                 # nn.Conv2d's: the fan-in of one bank
    assert local.weight.abs().max() <= bound and local.weight.std() > bound / 3
    assert repr(local) == ("LocallyConnected2d(5, 6, kernel_size=(2, 2), stride=(1, 1), "
                           "input_size=(5, 6))")
    assert "tiles=(2, 3)" in repr(tiled) and "padding='same'" in repr(conv)
    x = torch.randn(2, 3, 10, 12)
    y = m(x)
    state = m.state_dict()
    assert set(k.split(".")[-1] for k in state) == {"weight", "bias"}
    other = _model()
    for p in other.parameters():
        torch.nn.init.normal_(p)
    other.load_state_dict(state)
    assert torch.equal(other(x), y)


@pytest.mark.parametrize("cls", ["LocallyConnected2d", "TiledConv2d"])
def test_from_conv2d_keeps_the_output(cls):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2))
    x = torch.randn(2, 3, 9, 8)
    layer = (sft.LocallyConnected2d.from_conv2d(conv, (9, 8)) if cls == "LocallyConnected2d"
             else sft.TiledConv2d.from_conv2d(conv, (2, 2)))
    _close(layer(x), conv(x), torch.float32)
    # grouped and depthwise convs untie too: the layer takes their groups
    for groups, out in ((2, 6), (4, 8)):
        conv = torch.nn.Conv2d(4, out, 3, padding=1, groups=groups)
        x = torch.randn(2, 4, 9, 9)
        layer = (sft.LocallyConnected2d.from_conv2d(conv, (9, 9)) if cls == "LocallyConnected2d"
                 else sft.TiledConv2d.from_conv2d(conv, (2, 2)))
        assert layer.groups == groups and layer.weight.shape[-3] == 4 // groups
        _close(layer(x), conv(x), torch.float32)
    with pytest.raises(TypeError, match="torch.nn.Conv2d"):
        sft.TiledConv2d.from_conv2d(torch.nn.Linear(3, 3), (2, 2))


def test_locally_connected_1d_matches_its_reference():
    torch.manual_seed(2)
    m = sft.LocallyConnected1d(4, 6, 3, input_length=20, stride=2, padding=1, dilation=2)
    assert m.weight.shape == (9, 6, 4, 3) and m.output_length == 9
    x = torch.randn(3, 4, 20, requires_grad=True)
    y = m(x)
    w2 = m.weight.view(1, 9, 6, 4, 1, 3)
    xr = x.detach().clone().requires_grad_()
    wr = w2.detach().clone().requires_grad_()
    ref = _local_ref(xr.unsqueeze(2), wr, m.bias.detach().view(1, 9, 6), (1, 2), (0, 1),
                     (1, 2)).squeeze(2)
    _close(y, ref, torch.float32)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (ref * dy).sum().backward()
    _close(x.grad, xr.grad, torch.float32)
    _close(m.weight.grad, wr.grad.view(9, 6, 4, 3), torch.float32)
    same = sft.LocallyConnected1d(4, 2, 4, input_length=20, padding="same")
    assert same(x).shape == (3, 2, 20)


def test_padding_words_and_module_errors():
    m = sft.LocallyConnected2d(2, 3, (2, 4), input_size=(6, 7), padding="same")
    assert m.weight.shape[:2] == (6, 7)
    x = torch.randn(1, 2, 6, 7)
    # "same" with even kernels: the odd total's extra row/column at the end, as nn.Conv2d
    xp = F.pad(x, (1, 2, 0, 1))
    _close(m(x), _local_ref(xp, m.weight.detach(), m.bias.detach(), 1, 0, 1), torch.float32)
    with pytest.raises(ValueError, match=r"built for inputs \(N, 2, 6, 7\)"):
        m(torch.randn(1, 2, 7, 7))
    with pytest.raises(ValueError, match="stride 1"):
        sft.Conv2d(2, 3, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding"):
        sft.Conv2d(2, 3, 3, padding="full")
    with pytest.raises(ValueError, match="in_channels"):
        sft.Conv2d(0, 3, 3)
    with pytest.raises(ValueError):
        sft.LocallyConnected2d(2, 3, 5, input_size=(3, 3))      # no output position


# --------------------------------------------------------------------------------- boundary
def _spy(monkeypatch, table, op, record):
    real = table[op]

    def spy(*a, **kw):
        record(*a, **kw)
        return real(*a, **kw)
    monkeypatch.setitem(table, op, spy)


def test_contiguous_float32_is_not_copied_and_strided_inputs_are(monkeypatch):
    seen = []
    _spy(monkeypatch, sft._ops._FUNCTIONS, "local2d",
         lambda x, w, b=None, **kw: seen.append((x.ctypes.data, w.ctypes.data)))
    x, w, b = SHAPES[0].tensors("local2d", torch.float32)
    y = sft.local2d(x, w, b)
    assert seen[-1] == (x.data_ptr(), w.data_ptr())                  # views, no copy
    cl = x.to(memory_format=torch.channels_last)
    _close(sft.local2d(cl, w, b), y, torch.float32)
    assert seen[-1][0] != cl.data_ptr()                              # one copy
    nc = torch.randn(2, 3, 8, 7).transpose(2, 3)                     # non-contiguous
    _close(sft.local2d(nc, w, b), reference("local2d", nc, w, b, 1, 0, 1), torch.float32)
    assert y.is_contiguous() and y.shape == (2, 4, 5, 6)


@pytest.mark.parametrize("wants", [(True, False, False), (False, True, False),
                                   (False, False, True), (True, True, False)])
def test_only_the_wanted_gradients_are_computed(monkeypatch, wants):
    calls = []
    _spy(monkeypatch, sft._ops._BACKWARDS, "local2d",
         lambda *a, needs, **kw: calls.append(tuple(needs)))
    x, w, b = SHAPES[0].tensors("local2d", torch.float32)
    for t, want in zip((x, w, b), wants):
        t.requires_grad_(want)
    sft.local2d(x, w, b).sum().backward()
    assert calls == [tuple(n for n, want in zip(("input", "weight", "bias"), wants) if want)]
    assert [t.grad is not None for t in (x, w, b)] == list(wants)


def test_gradients_are_strided_like_their_parameter():
    conv = sft.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    conv(x).sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
    assert x.grad.stride() == x.stride()
    ref = sft.Conv2d(3, 4, 3)
    ref.load_state_dict({k: v.contiguous() for k, v in conv.state_dict().items()})
    ref(x.detach().contiguous()).sum().backward()
    _close(conv.weight.grad, ref.weight.grad, torch.float32)


def test_bad_input_raises_before_any_kernel():
    x, w, b = SHAPES[0].tensors("local2d", torch.float32)
    with pytest.raises(TypeError, match="x must be float32, float64, bfloat16 or float16, got "
                                        "torch.int64"):
        sft.local2d(x.long(), w, b)
    with pytest.raises(TypeError, match="weight has dtype bfloat16 but x has dtype float32"):
        sft.local2d(x, w.bfloat16(), b)
    with pytest.raises(TypeError, match="weight has dtype float16 but x has dtype bfloat16"):
        sft.local2d(x.bfloat16(), w.half(), None)
    with pytest.raises(TypeError, match="mixed dtypes"):
        sft.local2d(x, w.double(), None)
    with pytest.raises(TypeError, match="one device"):
        sft.local2d(x, w.to("meta"), None)
    with pytest.raises(ValueError, match="channel mismatch"):
        sft.conv2d(x, torch.randn(4, 5, 3, 3))
    with pytest.raises(ValueError, match="one bank per output position"):
        sft.local2d(x, w[:-1].contiguous(), None)
    with pytest.raises(ValueError, match="stride"):
        sft.conv2d(x, torch.randn(4, 3, 3, 3), stride=0)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA-tensor-without-a-GPU-backend case needs one")
    if all(sf.backends()[bk] != "available" for bk in ("numba-cuda", "cupy")):
        with pytest.raises(TypeError, match="GPU backend"):
            sft.local2d(x.cuda(), w.cuda(), b.cuda())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("op", LAYERS)
def test_autocast_keeps_reduced_precision(op, dtype):
    """Under torch.autocast on the CPU our operators run in the autocast dtype (no cast to
    float32 around them): float32 parameters and inputs are cast to it, the result is in it,
    and float32 parameters get float32 gradients through the cast."""
    x, w, b = SHAPES[0].tensors(op, torch.float32)
    w.requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        y = FUNCS[op](x, w, b, **SHAPES[0].kw)
        p = sft.soft_sharing_penalty(w, w.detach() * 0.5, 0.1)
    assert y.dtype == dtype and p.dtype == dtype
    assert torch.equal(y, FUNCS[op](x.to(dtype), w.detach().to(dtype), b.to(dtype),
                                    **SHAPES[0].kw))
    (y.float().sum() + p.float()).backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_autocast_rule_keeps_the_autocast_dtype_on_both_devices():
    """The rule's dtype is the region's autocast dtype on the CPU and on CUDA alike (every
    backend has 16-bit kernels); another autocast dtype (float64, say) computes in float32."""
    from sharenet_fast.torch import _ops

    for device in ("cpu", "cuda"):
        before = torch.get_autocast_dtype(device)
        try:
            for dtype in (torch.bfloat16, torch.float16):
                torch.set_autocast_dtype(device, dtype)
                assert _ops._autocast_dtype(device) == dtype, device
        finally:
            torch.set_autocast_dtype(device, before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("op", LAYERS)
def test_reduced_precision_tensors(op, dtype):
    """bf16/f16 tensors straight through the operators: results in that dtype, within its bound
    of the float64 reference on the same (rounded) values; gradients too."""
    from sharenet_fast import dtypes

    shape = SHAPES[0]
    x, w, b = (t.to(dtype) for t in shape.tensors(op, torch.float32))
    tol = dtypes.tol(str(dtype).replace("torch.", ""))
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = reference(op, xr, wr, br, **shape.kw)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = FUNCS[op](x, w, b, **shape.kw)
    assert y.dtype == dtype
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    y.backward(dy)
    ref.backward(dy.double())
    for got, want in ((y, ref), (x.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad)):
        assert got.dtype == dtype
        err = (torch.linalg.vector_norm(got.double() - want.detach())
               / torch.linalg.vector_norm(want.detach())).item()
        assert err <= tol, f"{op} {dtype}: rel err {err:.3g} > {tol:g}"


@pytest.mark.parametrize("op", LAYERS)
def test_opcheck_bfloat16(op):
    for fn, args in _op_samples(op, torch.bfloat16)[1:4]:
        torch.library.opcheck(fn, args)


def test_compile_fullgraph_matches_eager():
    m = _model()
    x = torch.randn(2, 3, 10, 12)
    eager = m(x)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    _close(y, eager, torch.float32)
    y.sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m(x).sum().backward()
    for got, want in zip(grads, [p.grad for p in m.parameters()]):
        _close(got, want, torch.float32)


def test_importing_sharenet_fast_does_not_import_torch():
    code = "import sys, sharenet_fast; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_eager_shortcuts_and_the_operator_give_the_same_results():
    """Eager CPU calls skip the dispatcher (sft._ops.direct: the implementation under no_grad,
    an autograd.Function with gradients); under a dispatch mode the operator itself runs. All
    three give the same bits, and the mode sees our operators."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w, b = SHAPES[1].tensors("local2d", torch.float32)
    assert sft._ops.direct(x, w, b) == "impl"
    with torch.no_grad():
        y0 = sft.local2d(x, w, b, **SHAPES[1].kw)
    runs = []
    for mode in (None, Seen()):
        wg = w.clone().requires_grad_()
        assert sft._ops.direct(x, wg, b) == "function"
        if mode is None:
            y = sft.local2d(x, wg, b, **SHAPES[1].kw)
            y.sum().backward()
        else:
            with mode:
                assert sft._ops.direct(x, wg, b) is None
                y = sft.local2d(x, wg, b, **SHAPES[1].kw)
                y.sum().backward()
            assert any("sharenet_fast.local2d" in op for op in mode.ops)
            assert any("sharenet_fast.local2d_backward" in op for op in mode.ops)
        runs.append((y.detach(), wg.grad))
    assert torch.equal(runs[0][0], y0) and torch.equal(runs[1][0], y0)
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("value", [2**70, 2**31, (1, 2**70), (1, -2**70)],
                         ids=["2**70", "2**31", "pair", "negative"])
def test_integers_past_the_kernels_index_range_raise_a_value_error_naming_them(value):
    """Past the kernels' 32-bit index range, every integer argument of the functional forms
    and the modules is a ValueError naming it, on every route: not the RuntimeError of torch's
    int64 schema (the operator route, here under autocast) nor an overflow in a kernel."""
    x, w, b = SHAPES[0].tensors("conv2d", torch.float32)
    for name in ("stride", "padding", "dilation"):
        for route in ("impl", "function", "operator"):
            wr = w.clone().requires_grad_(route == "function")
            autocast = torch.autocast("cpu", enabled=route == "operator")
            with autocast, pytest.raises(ValueError, match=name):
                sft.conv2d(x, wr, b, **{name: value})
    makers = {
        "kernel_size": lambda v: sft.Conv2d(3, 4, v),
        "stride": lambda v: sft.TiledConv2d(3, 4, 3, tiles=2, stride=v),
        "padding": lambda v: sft.Conv2d(3, 4, 3, padding=v),
        "dilation": lambda v: sft.LocallyConnected2d(3, 4, 3, input_size=8, dilation=v),
        "tiles": lambda v: sft.TiledConv2d(3, 4, 3, tiles=v),
        "input_size": lambda v: sft.LocallyConnected2d(3, 4, 3, input_size=v),
        "input_length": lambda v: sft.LocallyConnected1d(3, 4, 3, input_length=v),
        "in_channels": lambda v: sft.Conv2d(v, 4, 3),
        "out_channels": lambda v: sft.LocallyConnected1d(3, v, 3, input_length=8),
    }
    one = value if isinstance(value, int) else value[1]       # the 1-D layer's and channels
    for name, make in makers.items():
        scalar = name in ("input_length", "in_channels", "out_channels")
        with pytest.raises(ValueError, match=name):
            make(one if scalar else value)
    for name in ("kernel_size", "stride", "padding", "dilation"):
        with pytest.raises(ValueError, match=name):
            sft.LocallyConnected1d(3, 4, **{"kernel_size": 3, "input_length": 8, name: one})


def test_geometry_is_validated_once_and_kept_for_the_backward(monkeypatch):
    """A module validates stride/padding/dilation at construction and a functional form once a
    call; neither validates them again in forward or backward (setup_context keeps them)."""
    calls = []
    real = sft._modules.pair
    monkeypatch.setattr(sft._modules, "pair",
                        lambda v, name, **kw: calls.append(name) or real(v, name, **kw))
    m = sft.TiledConv2d(3, 4, 3, tiles=2, stride=2, padding=1)
    assert sorted(calls) == ["dilation", "kernel_size", "padding", "stride", "tiles"]
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    for grad in (False, True):                       # the implementation, the Function
        calls.clear()
        with torch.set_grad_enabled(grad):
            y = m(x)
        if grad:
            y.sum().backward()
        assert calls == [] and (m.weight.grad is not None) == grad
    calls.clear()
    sft.tiled_conv2d(x, m.weight, m.bias, stride=2, padding=1).sum().backward()
    assert sorted(calls) == ["dilation", "padding", "stride"]


def test_geometry_set_after_construction_is_validated_and_used():
    """stride/padding/dilation assigned on a built module (as on torch.nn.Conv2d) take effect in
    the next forward; a bad value raises naming it and leaves the module as it was."""
    x = torch.randn(2, 3, 9, 9)
    m = sft.Conv2d(3, 4, 3, padding=1)
    m.stride, m.dilation = 2, (1, 2)
    assert (m.stride, m.dilation) == ((2, 2), (1, 2))
    want = F.conv2d(x, m.weight, m.bias, stride=2, padding=1, dilation=(1, 2))
    _close(m(x), want, torch.float32)
    for word, value, error in (("stride", 0, "stride must be positive"),
                               ("padding", -1, "padding must be non-negative"),
                               ("dilation", 2**40, "dilation must be at most"),
                               ("padding", "same", "needs stride 1")):
        with pytest.raises(ValueError, match=error):
            setattr(m, word, value)
        _close(m(x), want, torch.float32)             # unchanged
    m.stride = 1
    m.padding = "same"
    _close(m(x), F.conv2d(x, m.weight, m.bias, padding="same", dilation=(1, 2)), torch.float32)
    assert "padding='same'" in repr(m)
    lc = sft.LocallyConnected2d(3, 4, 3, input_size=(9, 9))
    lc.stride = 2                                      # the banks no longer fit the output
    with pytest.raises(ValueError, match=r"grid \(7, 7\) does not match the output size"):
        lc(x)
    m1 = sft.LocallyConnected1d(3, 4, 3, input_length=9)
    with pytest.raises(TypeError, match="stride must be an int"):
        m1.stride = (1, 2)
    m1.padding = 1
    assert m1.padding == 1 and m1._geo[1] == [0, 1] and "padding=1" in repr(m1)


def test_locally_connected_1d_is_the_2d_layer_with_one_row():
    m = sft.LocallyConnected1d(4, 6, 3, input_length=20, stride=2, bias=False)
    assert isinstance(m, sft.LocallyConnected2d)
    assert {k: v.shape for k, v in m.state_dict().items()} == {"weight": (9, 6, 4, 3)}
    assert repr(m) == ("LocallyConnected1d(4, 6, kernel_size=3, stride=2, input_length=20, "
                       "bias=False)")
    m2 = sft.LocallyConnected2d(4, 6, (1, 3), input_size=(1, 20), stride=(1, 2), bias=False)
    with torch.no_grad():
        m2.weight.copy_(m.weight.view(1, 9, 6, 4, 1, 3))
    x = torch.randn(2, 4, 20)
    assert torch.equal(m(x), m2(x.unsqueeze(2)).squeeze(2))
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        sft.LocallyConnected1d(4, 6, (1, 3), input_length=20)
    with pytest.raises(ValueError, match=r"built for inputs \(N, 4, 20\)"):
        m(torch.randn(2, 4, 21))


# ---------------------------------------------------------------------------------- groups
@pytest.mark.parametrize("op", LAYERS)
@pytest.mark.parametrize("groups, K", [(2, 4), (4, 4)])
def test_grouped_functional_matches_torch_and_gradchecks(op, groups, K):
    """groups= through the operators: equal to torch's grouped conv (masked per bank for the
    tiled layer, a conv per position for the local one: every bank set to one filter) and
    gradcheck in float64 on banks that differ."""
    torch.manual_seed(3)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    w = torch.randn(K, 4 // groups, 3, 2, dtype=torch.float64)
    b = torch.randn(K, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, w, b, padding=1, groups=groups)
    P, Q = want.shape[2:]
    lead = {"conv2d": (), "tiled_conv2d": (2, 3), "local2d": (P, Q)}[op]
    wb, bb = w.expand(lead + w.shape).contiguous(), b.expand(lead + b.shape).contiguous()
    _close(FUNCS[op](x, wb, bb, padding=1, groups=groups), want, torch.float64)
    wr = (wb + 0.1 * torch.randn_like(wb)).requires_grad_()
    args = (x.clone().requires_grad_(), wr, bb.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: FUNCS[op](*a, padding=1, groups=groups), args)


def test_grouped_modules_train_compile_and_reject_bad_groups():
    torch.manual_seed(4)
    m = torch.nn.Sequential(sft.Conv2d(4, 8, 3, padding=1, groups=4), torch.nn.ReLU(),
                            sft.LocallyConnected2d(8, 8, 3, (6, 6), groups=2),
                            sft.TiledConv2d(8, 4, 1, (2, 2), groups=4))
    assert m[0].weight.shape == (8, 1, 3, 3) and m[2].weight.shape == (4, 4, 8, 4, 3, 3)
    assert "groups=4" in repr(m[0]) and "groups=2" in repr(m[2])
    x = torch.randn(3, 4, 6, 6)
    eager = m(x)
    eager.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    _close(torch.compile(m, fullgraph=True)(x), eager, torch.float32)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        sft.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(TypeError, match="groups must be an int"):
        sft.LocallyConnected2d(4, 4, 3, (6, 6), groups=2.0)
    with pytest.raises(AttributeError, match="groups is fixed"):
        m[0].groups = 2
    with pytest.raises(ValueError, match="groups"):
        sft.conv2d(x, torch.randn(8, 1, 3, 3), groups=3)
