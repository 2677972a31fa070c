"""The report side of the benchmarks: `build` runs the suite and writes the tables and JSON
(`python -m bench`), `schema` is the JSON format, `targets` the targets table, `compare` diffs
two runs (`python -m bench.report.compare`), `plots` draws a run (`python -m bench.report.plots`).
This package imports none of them, so the measuring side (bench/harness.py) can use `schema`
without a cycle."""
