"""Schema-valid benchmark documents (bench/report/schema.py) from a few timings, for the tests of
bench/report/compare.py and bench/report/plots.py."""
import numpy as np

from bench.report import schema

DIMS = dict(N=2, C=3, H=9, W=9, K=4, R=3, S=3, stride=1, padding=0)


def make_doc(times, device="AMD EPYC, 2 CPUs", ours=("cpu",), target="cpu"):
    """{(shape, layer, pass label, impl): samples in s} -> a document compare/plots accept
    (a pass label "weight (deterministic)" is pass "weight" with deterministic true, and
    "backward (grad_weight=)" pass "backward" with accumulate true)."""
    results = []
    for (shape, layer, label, impl), samples in times.items():
        pass_, variants = schema.parse_label(label)
        samples = [float(s) for s in samples]
        q1, med, q3 = (float(v) for v in np.percentile(samples, [25, 50, 75]))
        role = "ours" if impl in ours else "peer"
        results.append(dict(
            shape=shape, dims=dict(DIMS), layer=layer, grid=[1, 1], **{"pass": pass_},
            **variants, impl=impl, role=role,
            label=f"ours ({impl})" if role == "ours" else impl,
            params=112, weight_bytes=432, flops=2 * 2 * 4 * 49 * 27, bytes=2000,
            weight_stream_bytes=432, samples_s=samples, median_s=med, q1_s=q1, q3_s=q3,
            gflops=1e-3 / med, gbps=2e-6 / med, weight_gbps=4e-7 / med, pct_sgemm=1.0,
            pct_copy=2.0, pct_copy_weights=0.5, floor_s=med / 2, pct_floor=50.0, rel_err=None,
            rel_err_against=None))
    shapes = {r["shape"]: dict(DIMS, describe="2x3x9x9 * 4x3x3x3", P=7, Q=7, gflop_forward=1e-5)
              for r in results}
    return dict(schema=schema.VERSION,
                machine=dict(device=device, date="2026-11-25 12:00:00",
                             load_average_at_start=0.1, isa="native"),
                versions=dict(sharenet_fast="0.3.0"),
                limits=dict(sgemm_gflops=250.0, copy_gbps=50.0, read_gbps=40.0),
                config=dict(mode="quick", target=target, backends=list(ours), repeat=3,
                            min_time_s=0.1, batch=2, shapes=sorted(shapes),
                            layers=["conv2d", "tiled_conv2d", "local2d"], tile=[2, 2], peers=[]),
                shapes=shapes, results=results, startup=None, peak_memory=None)
