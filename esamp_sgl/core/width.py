"""The candidate width K where host reads are not free (CUDA): it follows the data, a few steps late,
without a host sync.

On CPU candidate_set cuts K to the step's largest kept count, read on the host for free. On CUDA
that count lives on the device and reading it would stall the pipeline every step, so K was the
static cap `max_candidates` (1024), and at that width d = ĥ·W_U is cheapest as one GEMM over the whole
vocabulary: the LM head read once more per step (1.1 GB at the 7B shape; docs/performance.md § 9).

Here each step copies its largest kept count (twice the width when a row was cut) to pinned host
memory without waiting; a later step reads the newest copy whose event has completed (`query`,
never a wait) and takes K = the smallest power of two ≥ twice that count, at least FLOOR and at most
the cap. Until a count is back K is the cap. Powers of two keep the shapes few (one CUDA graph per
width). A row with more survivors than a K below the cap does not sample from a cut set: it keeps its
stock token for that step (`CandidateSet.partial`; counted as truncated), and K grows.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from esamp_sgl.core.candidates import CandidateSet

FLOOR = 16
IN_FLIGHT = 4  # counts on their way back at most; a step beyond that does not send its own


class CandidateWidth:
    def __init__(self, cap: int, device: torch.device) -> None:
        self.cap = cap
        self.width = cap
        self._cuda = device.type == "cuda"
        self._in_flight: deque[tuple[np.ndarray, object | None]] = deque()

    def current(self) -> int:
        """K for this step, from the newest count that is back (the cap until one is)."""
        newest = None
        while self._in_flight and (self._in_flight[0][1] is None or self._in_flight[0][1].query()):
            newest = self._in_flight.popleft()[0]
        if newest is not None:
            need = max(int(newest), 1)  # numpy: pinned host memory, read without a device op
            self.width = min(self.cap, max(FLOOR, 1 << (2 * need - 1).bit_length()))
        return self.width

    def observe(self, cand: CandidateSet) -> None:
        """Send this step's largest kept count (2·K if a row was cut) to the host, without waiting."""
        if len(self._in_flight) >= IN_FLIGHT:
            return
        width = cand.keep.shape[1]
        need = torch.where(cand.truncated.any(), 2 * width, cand.keep.sum(-1).max())
        host = torch.empty((), dtype=torch.int64, pin_memory=self._cuda)
        host.copy_(need, non_blocking=self._cuda)
        event = None
        if self._cuda:
            event = torch.cuda.Event()
            event.record()
        self._in_flight.append((host.numpy(), event))

