"""What the bench scripts share."""

from __future__ import annotations

import time


class Clock:
    """Wall and CPU seconds since it was made (CPU of this process: its threads included)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu
