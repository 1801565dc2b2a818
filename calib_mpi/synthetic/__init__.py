"""Synthetic AGIPD data with known ground truth, for the demo, the tests and the benchmarks."""
