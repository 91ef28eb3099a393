"""Benchmarks: every figure is measured in the same run as the baseline it is compared with.

`python -m bench` runs them all; `python -m bench archive` runs one (see `bench/__main__.py`).
Methods and how to read the output: docs/benchmarks.md.
"""
