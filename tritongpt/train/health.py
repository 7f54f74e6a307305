"""Bad steps: a step whose loss or gradient norm is not finite skips its update (train.loop) and
is counted here, on the device, so that counting adds no host sync to a step.

The number of bad steps in a row must still reach the host for the run to stop at max_bad_steps.
On a GPU each step's count is copied to pinned host memory without waiting, and read one step
later, once the next step is queued behind it: by then the copy is done or nearly, so the wait
overlaps with the next step's work, and the run stops at most one step after the limit. On a CPU
the count is read at once (there is no device to wait for).
"""

import torch


class BadSteps:
    def __init__(self, device, total=0, late=None):
        """late: read the count one step late (default: on a GPU)."""
        self.device = torch.device(device)
        self.total = torch.full((), total, dtype=torch.long, device=self.device)  # skipped updates
        self.in_a_row = torch.zeros_like(self.total)
        self._late = self.device.type == "cuda" if late is None else late
        if self._late:  # two host buffers (and events), used in turn: one being filled, one being read
            cuda = self.device.type == "cuda"
            self._host = [torch.zeros((), dtype=torch.long, pin_memory=cuda) for _ in range(2)]
            self._events = [torch.cuda.Event() for _ in range(2)] if cuda else None
            self._turn = 0
            self._pending = None  # the buffer of the last step, not read yet

    def count(self, bad):
        """Count one step; `bad` is a 0-d long tensor on the device, 1 when the step was bad."""
        self.total += bad
        self.in_a_row = (self.in_a_row + bad) * bad

    def latest(self):
        """Bad steps in a row as of the last step (on a GPU: the step before it), as an int.
        Called once per step, after count()."""
        if not self._late:
            return int(self.in_a_row)
        previous = self._pending
        i = self._turn
        self._host[i].copy_(self.in_a_row, non_blocking=True)
        if self._events:
            self._events[i].record()
        self._pending, self._turn = i, 1 - i
        if previous is None:
            return 0
        if self._events:
            self._events[previous].synchronize()
        return int(self._host[previous])

    def now(self):
        """Bad steps in a row as of the last step; waits for the device (for evaluations, which wait anyway)."""
        return int(self.in_a_row)
