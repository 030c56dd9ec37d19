"""Measuring helpers shared by the scripts in benchmarks/."""

from __future__ import annotations

import os
import threading
import time

import torch


class PeakMemory:
    """Peak resident memory (CPU, sampled from /proc) or peak allocated memory (CUDA) during a block."""

    def __init__(self, device: str):
        self.device, self.peak, self._running = device, 0, False

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start, self._running = self._rss(), True
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self._running = False
            self._thread.join()
