"""Benchmarks of the project: each module runs from the repository root as ``python -m bench.<name>``."""
