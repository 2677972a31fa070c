"""Benchmarks for sharenet_fast (see docs/design.md, "Benchmarks").

    python -m bench [--quick|--full] [--gpu] [--isa native|avx2] [--shapes a,b]
                    [--layers conv2d,local2d] [--json PATH]
    python -m bench.isa avx2 CMD...          # CMD in the AVX2-only environment (.ci/avx2.env)
    pytest bench -n0 --benchmark-enable      # pytest-benchmark suite (bench_*.py), one process
    python -m bench.report.compare OLD.json NEW.json | python -m bench.report.plots RUN.json
    python -m bench.report.targets                  # the targets table

Data: the suite in bench/shapes.py, the layer kinds and passes in the op table (sf.layers()),
the targets in bench/report/targets.py, the JSON format in bench/report/schema.py.
bench/harness.py is the one harness (launch, check, time, record) behind python -m bench and the
pytest-benchmark suite.
"""
