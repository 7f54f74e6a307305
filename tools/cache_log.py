"""The Triton cache manager the campaign runs its phases with: Triton's own file cache, which also
appends a line to the file that TRITONGPT_CACHE_LOG names for every kernel it looks up, "hit" or
"miss" with the entry's folder and the kernel's name. So a run says how much of the warm cache it
used. Set through Triton's own switch, with tools/ on PYTHONPATH:

    TRITON_CACHE_MANAGER=cache_log:LoggingCacheManager TRITONGPT_CACHE_LOG=FILE

Triton imports it in the middle of a compile: it imports nothing of ours.
"""

import os

from triton.runtime.cache import FileCacheManager


class LoggingCacheManager(FileCacheManager):
    def get_group(self, filename):
        """The lookup of a compiled kernel (filename is '<kernel>.json'): a hit when the group holds it."""
        group = super().get_group(filename)
        log = os.environ.get("TRITONGPT_CACHE_LOG")
        if log:
            hit = bool(group) and filename in group
            with open(log, "a") as f:  # one short line per write: lines of parallel compiles do not mix
                f.write(f"{'hit' if hit else 'miss'} {self.key} {filename.removesuffix('.json')}\n")
        return group
