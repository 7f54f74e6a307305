"""The trainer: `python -m tritongpt.train` on one device, `torchrun -m tritongpt.train` with DDP."""
