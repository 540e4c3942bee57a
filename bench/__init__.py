"""Benchmarks of the dashboard and the decode: `python -m bench` runs the CPU ones."""
