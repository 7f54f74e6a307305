"""Profiler captures (nsys, torch.profiler) of the benchmark's steps and their summaries; the NVTX
ranges they record live in instrument/nvtx.py."""
