"""What every layer may use to describe and mark a run: run metadata (run_info, git_commit,
device_name) and NVTX ranges. Imports nothing of ours, so anything may import it."""
