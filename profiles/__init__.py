"""NVTX ranges and profiler captures (nsys, torch.profiler)."""
