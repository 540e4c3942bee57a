"""Benchmarks of issue 6 (and the soak of issue 7): `python -m bench` runs the CPU ones."""
