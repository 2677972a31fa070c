"""Benchmarks for sharenet_fast (see DESIGN.md, "Benchmarks").

    python -m bench [--quick] [--shapes a,b] [--repeat N] [--json PATH] [--markdown]
    pytest bench --benchmark-enable          # pytest-benchmark suite (bench_*.py)

The suite itself is data, in bench/shapes.py.
"""
