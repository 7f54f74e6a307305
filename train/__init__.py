"""The trainer: `python -m train` on one device, `torchrun -m train` with DDP."""
