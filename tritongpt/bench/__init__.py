"""Benchmarks: tokens/sec and MFU of a training step; per-kernel speed against the roofline."""
