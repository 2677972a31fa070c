"""Experiments with sharenet_fast's layers (not benchmarks: what parameter sharing does to a
model). Each is a module run as `python -m experiments.<name>`, its committed results under
experiments/results/:

    python -m experiments.digits --save     four first layers (shared, tiled, local, soft
                                            sharing) trained on scikit-learn's 8x8 digits
"""
