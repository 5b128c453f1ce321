"""Throughput, memory and robustness measurements (not part of the test suite).

Run each from the repository root as a module, e.g.
``python -m benchmarks.robustness --help``, so that benchmarks import each
other by package path.
"""
