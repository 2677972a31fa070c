"""Float64 NumPy oracle for every op: written to be obviously right, not fast.

Each function loops over the R*S kernel taps; for one tap (r, s) the input pixels that meet the
output grid are a strided slice of the zero-padded input, so every pass is a sum of R*S einsums.
All arithmetic is float64 whatever the input dtype; results are float64.
"""
import numpy as np

from .geometry import ConvGeometry


def _geometry(x_shape, w_shape, stride, padding, dilation, groups=1):
    N, C, H, W = x_shape
    K, _, R, S = w_shape[-4:]
    return ConvGeometry.make(N, C, H, W, K, R, S, stride, padding, dilation, groups)


# Groups: a grouped layer is the ungrouped layer whose banks are block-diagonal in (K, C):
# filter k of group k // (K/G) has zeros on every input channel outside its group's C/G. The
# oracle builds that weight and runs the one tap loop; the weight gradient is the full one's
# diagonal blocks.
def ungroup(weight, groups):
    """(..., K, C/G, R, S) -> (..., K, C, R, S), float64, block-diagonal over the G groups."""
    w = np.asarray(weight, dtype=np.float64)
    if groups == 1:
        return w
    K, Cg = w.shape[-4:-2]
    Kg = K // groups
    full = np.zeros(w.shape[:-3] + (Cg * groups,) + w.shape[-2:])
    for grp in range(groups):
        full[..., grp * Kg:(grp + 1) * Kg, grp * Cg:(grp + 1) * Cg, :, :] = \
            w[..., grp * Kg:(grp + 1) * Kg, :, :, :]
    return full


def regroup(full, groups):
    """The diagonal blocks of a (..., K, C, R, S) array: (..., K, C/G, R, S) (adjoint of
    ungroup)."""
    if groups == 1:
        return full
    K, C = full.shape[-4:-2]
    Kg, Cg = K // groups, C // groups
    out = np.empty(full.shape[:-3] + (Cg,) + full.shape[-2:])
    for grp in range(groups):
        out[..., grp * Kg:(grp + 1) * Kg, :, :, :] = \
            full[..., grp * Kg:(grp + 1) * Kg, grp * Cg:(grp + 1) * Cg, :, :]
    return out


def _full_shape(w_shape, C):
    """The ungrouped weight shape of a grouped one, for input channels C."""
    return tuple(w_shape[:-3]) + (C,) + tuple(w_shape[-2:])


def _tap(g, r, s):
    """Slices of the padded input that tap (r, s) reads for the whole output grid."""
    (sh, sw), (dh, dw) = g.stride, g.dilation
    rows = slice(r * dh, r * dh + sh * (g.P - 1) + 1, sh)
    cols = slice(s * dw, s * dw + sw * (g.Q - 1) + 1, sw)
    return rows, cols


def _pad(x, g):
    """Zero-padded float64 copy: `padding` before, `padding + extra` after (padding="same")."""
    (ph, pw), (eh, ew) = g.padding, g.extra
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)))


# The three tap loops every layer shares. `bank` is the weight's einsum subscript for one tap:
# "kc" for one shared bank (K, C), "pqkc" for a bank per position (P, Q, K, C); the weight's
# last two axes are always the tap (r, s).
def _correlate(x, w, g, bank):
    """y[n, k, p, q] = sum over taps and c of x_tap[n, c, p, q] * w[..., r, s]."""
    xp = _pad(x, g)
    w = np.asarray(w, dtype=np.float64)
    y = np.zeros(g.y_shape)
    for r in range(g.R):
        for s in range(g.S):
            rows, cols = _tap(g, r, s)
            y += np.einsum(f"ncpq,{bank}->nkpq", xp[:, :, rows, cols], w[..., r, s])
    return y


def _correlate_input_grad(dy, w, g, bank):
    """The adjoint of _correlate in x: each tap adds its share back into the padded input."""
    w = np.asarray(w, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    ph, pw = g.padding
    dxp = np.zeros((g.N, g.C, g.H + 2 * ph + g.extra[0], g.W + 2 * pw + g.extra[1]))
    for r in range(g.R):
        for s in range(g.S):
            rows, cols = _tap(g, r, s)
            dxp[:, :, rows, cols] += np.einsum(f"nkpq,{bank}->ncpq", dy, w[..., r, s])
    return dxp[:, :, ph:ph + g.H, pw:pw + g.W]


def _correlate_weight_grad(dy, x, g, bank, w_shape):
    """The adjoint of _correlate in w: per tap, dy against the input slice the tap read."""
    dy = np.asarray(dy, dtype=np.float64)
    xp = _pad(x, g)
    dw = np.zeros(w_shape)
    for r in range(g.R):
        for s in range(g.S):
            rows, cols = _tap(g, r, s)
            dw[..., r, s] = np.einsum(f"nkpq,ncpq->{bank}", dy, xp[:, :, rows, cols])
    return dw


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    g = _geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    y = _correlate(x, ungroup(weight, groups), g, "kc")
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def conv2d_input_grad(grad_out, x_shape, weight, *, stride=1, padding=0, dilation=1,
                      groups=1):
    g = _geometry(x_shape, weight.shape, stride, padding, dilation, groups)
    return _correlate_input_grad(grad_out, ungroup(weight, groups), g, "kc")


def conv2d_weight_grad(grad_out, x, w_shape, *, stride=1, padding=0, dilation=1, groups=1):
    g = _geometry(x.shape, w_shape, stride, padding, dilation, groups)
    full = _correlate_weight_grad(grad_out, x, g, "kc", _full_shape(g.w_shape, g.C))
    return regroup(full, groups)


def conv2d_bias_grad(grad_out):
    return np.asarray(grad_out, dtype=np.float64).sum(axis=(0, 2, 3))


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1):
    """(input, weight, bias) gradients, float64."""
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (conv2d_input_grad(grad_out, x.shape, weight, **kw),
            conv2d_weight_grad(grad_out, x, weight.shape, **kw),
            conv2d_bias_grad(grad_out))


# ------------------------------------------------------------------ untied and partially tied
# A locally-connected layer has one bank (K, C, R, S) per output position: weight (P, Q, K, C, R, S).
# A tiled layer has a TP x TQ grid of banks, output (p, q) using bank [p % TP, q % TQ]. The oracle
# treats tiled as locally connected with each bank repeated over its tile class, so there is one
# loop to trust: for tap (r, s), y[n, k, p, q] += sum_c x_tap[n, c, p, q] * w[p, q, k, c, r, s].

def _local_geometry(x_shape, w_shape, stride, padding, dilation, groups=1):
    """Geometry from a 6-D banked weight (grid, grid, K, C/G, R, S): local2d or tiled_conv2d."""
    return _geometry(x_shape, w_shape, stride, padding, dilation, groups)


def expand_tiles(weight, out_hw):
    """(TP, TQ, ...) banks -> (P, Q, ...): position (p, q) gets bank [p % TP, q % TQ]."""
    P, Q = out_hw
    TP, TQ = weight.shape[:2]
    return np.asarray(weight)[np.arange(P)[:, None] % TP, np.arange(Q)[None, :] % TQ]


def fold_tiles(per_position, tile):
    """(P, Q, ...) -> (TP, TQ, ...): the sum over each tile class (adjoint of expand_tiles)."""
    TP, TQ = tile
    P, Q = per_position.shape[:2]
    out = np.zeros((TP, TQ) + per_position.shape[2:])
    for p in range(P):
        for q in range(Q):
            out[p % TP, q % TQ] += per_position[p, q]
    return out


def local2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    g = _local_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    y = _correlate(x, ungroup(weight, groups), g, "pqkc")
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64).transpose(2, 0, 1)[None]
    return y


def local2d_input_grad(grad_out, x_shape, weight, *, stride=1, padding=0, dilation=1,
                       groups=1):
    g = _local_geometry(x_shape, weight.shape, stride, padding, dilation, groups)
    return _correlate_input_grad(grad_out, ungroup(weight, groups), g, "pqkc")


def local2d_weight_grad(grad_out, x, w_shape, *, stride=1, padding=0, dilation=1, groups=1):
    g = _local_geometry(x.shape, w_shape, stride, padding, dilation, groups)
    full = _correlate_weight_grad(grad_out, x, g, "pqkc",
                                  (g.P, g.Q) + _full_shape(g.w_shape, g.C))
    return regroup(full, groups)


def local2d_bias_grad(grad_out):
    return np.asarray(grad_out, dtype=np.float64).sum(axis=0).transpose(1, 2, 0)


def local2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1):
    """(input, weight, bias) gradients of local2d, float64."""
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (local2d_input_grad(grad_out, x.shape, weight, **kw),
            local2d_weight_grad(grad_out, x, weight.shape, **kw),
            local2d_bias_grad(grad_out))


def tiled_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    g = _local_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    wl = expand_tiles(weight, (g.P, g.Q))
    bl = None if bias is None else expand_tiles(bias, (g.P, g.Q))
    return local2d(x, wl, bl, stride=stride, padding=padding, dilation=dilation,
                   groups=groups)


def tiled_conv2d_input_grad(grad_out, x_shape, weight, *, stride=1, padding=0, dilation=1,
                            groups=1):
    g = _local_geometry(x_shape, weight.shape, stride, padding, dilation, groups)
    return local2d_input_grad(grad_out, x_shape, expand_tiles(weight, (g.P, g.Q)),
                              stride=stride, padding=padding, dilation=dilation, groups=groups)


def tiled_conv2d_weight_grad(grad_out, x, w_shape, *, stride=1, padding=0, dilation=1,
                             groups=1):
    g = _local_geometry(x.shape, w_shape, stride, padding, dilation, groups)
    local_shape = (g.P, g.Q) + tuple(w_shape[2:])
    per_position = local2d_weight_grad(grad_out, x, local_shape, stride=stride,
                                       padding=padding, dilation=dilation, groups=groups)
    return fold_tiles(per_position, w_shape[:2])


def tiled_conv2d_bias_grad(grad_out, tile):
    return fold_tiles(local2d_bias_grad(grad_out), tile)


def tiled_conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1):
    """(input, weight, bias) gradients of tiled_conv2d, float64."""
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (tiled_conv2d_input_grad(grad_out, x.shape, weight, **kw),
            tiled_conv2d_weight_grad(grad_out, x, weight.shape, **kw),
            tiled_conv2d_bias_grad(grad_out, weight.shape[:2]))


# ---------------------------------------------------------------------------- soft sharing
def soft_sharing_penalty(a, b, strength):
    """(penalty, grad wrt a, grad wrt b) of strength/2 * sum((a - b)**2), in float64:
    grad_a = strength * (a - b), grad_b = -grad_a."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 0.5 * float(strength) * float(np.sum(d * d)), strength * d, -strength * d


# ------------------------------------------------------------------ neighbour soft sharing
NEIGHBOURHOODS = {4: ((0, 1), (1, 0)), 8: ((0, 1), (1, 0), (1, 1), (1, -1))}
COSINE_EPS = 1e-8


def neighbour_pairs(grid, neighbourhood, wrap):
    """[(p, q, p2, q2)]: each bank of a (TP, TQ) grid with its neighbours one step to the
    right, below (and, for 8, down-right and down-left), each unordered pair once; wrap=True
    makes the grid a torus (on a grid 1 or 2 wide a bank may meet itself or a neighbour
    twice: every (position, direction) counts)."""
    TP, TQ = grid
    pairs = []
    for p in range(TP):
        for q in range(TQ):
            for dp, dq in NEIGHBOURHOODS[neighbourhood]:
                p2, q2 = p + dp, q + dq
                if wrap:
                    p2, q2 = p2 % TP, q2 % TQ
                elif not (p2 < TP and 0 <= q2 < TQ):
                    continue
                pairs.append((p, q, p2, q2))
    return pairs


def neighbour_count(grid, neighbourhood, wrap):
    """len(neighbour_pairs(grid, neighbourhood, wrap)), without listing them: per direction
    (dp, dq), every position on a torus, else the (TP - dp) x (TQ - |dq|) that have one."""
    TP, TQ = grid
    return sum(TP * TQ if wrap else max(0, TP - dp) * max(0, TQ - abs(dq))
               for dp, dq in NEIGHBOURHOODS[neighbourhood])


def neighbour_penalty(weight, strength, metric="l2", neighbourhood=4, wrap=False):
    """(penalty, gradient) in float64 of the neighbour penalty of banked weights
    (TP, TQ, K, C, R, S), over the pairs of neighbour_pairs():
    l2:     strength/2 * sum over pairs of ||w[p, q] - w[p2, q2]||^2
    cosine: strength * mean over pairs and filters k of (1 - cos(w[p, q, k], w[p2, q2, k])),
            cos(a, b) = a.b / (max(|a|, eps) max(|b|, eps)), eps = COSINE_EPS."""
    w = np.asarray(weight, np.float64)
    TP, TQ, K = w.shape[:3]
    v = w.reshape(TP, TQ, K, -1)
    grad = np.zeros_like(v)
    pairs = neighbour_pairs((TP, TQ), neighbourhood, wrap)
    total = 0.0
    if metric == "l2":
        for p, q, p2, q2 in pairs:
            d = v[p, q] - v[p2, q2]
            total += 0.5 * strength * float(np.sum(d * d))
            grad[p, q] += strength * d
            grad[p2, q2] -= strength * d
    else:
        scale = strength / (len(pairs) * K) if pairs else 0.0
        for p, q, p2, q2 in pairs:
            a, b = v[p, q], v[p2, q2]                          # (K, C*R*S)
            la, lb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
            na, nb = np.maximum(la, COSINE_EPS), np.maximum(lb, COSINE_EPS)
            cos = np.sum(a * b, axis=1) / (na * nb)
            total += scale * float(np.sum(1.0 - cos))
            # d cos / da = b / (na nb) - cos a / |a|^2 (the second term 0 where |a| <= eps)
            ca = np.where(la > COSINE_EPS, cos / na**2, 0.0)
            cb = np.where(lb > COSINE_EPS, cos / nb**2, 0.0)
            grad[p, q] -= scale * (b / (na * nb)[:, None] - ca[:, None] * a)
            grad[p2, q2] -= scale * (a / (na * nb)[:, None] - cb[:, None] * b)
    return total, grad.reshape(w.shape)


# ------------------------------------------------------------------------- bank averaging
def average_banks(weight, groups_of):
    """float64 banks (TP, TQ, ...) with each block of groups_of = (gp, gq) positions replaced by
    its mean (blocks from (0, 0); the last ones clipped at the grid's edge)."""
    w = np.array(weight, np.float64)
    gp, gq = groups_of
    for p0 in range(0, w.shape[0], gp):
        for q0 in range(0, w.shape[1], gq):
            block = w[p0:p0 + gp, q0:q0 + gq]
            block[...] = block.mean(axis=(0, 1), keepdims=True)
    return w
