"""What the device lets ESamp do cheaply: one flag, shared by every part that decides by it.

On CPU a tensor already lives on the host, so reading a value there (a count, a mask, the slots) costs
nothing; on CUDA every such read is a sync that stalls the stream. Where that is the question, ESamp's
parts read `HostReads.free` and nothing else:

* the candidate set is cut to the step's largest kept count (step.py, candidates.candidate_set);
  otherwise its width follows the counts of earlier steps, copied back without a wait (width.py);
* a batch without the engine's plan is grouped per slot from a host read of its slots (step.planned,
  DistillerBank.forward); otherwise each row gathers its own parameters;
* the trainer resets non-finite slots at once (a host read) instead of collecting them on the device.

The Explorer makes one and hands the same object to its bank and trainer, so flipping `free` (the CUDA
code path run on CPU: tests, esamp_sgl/bench/opcount.py) switches every part together. Decisions
about other things CUDA has (pinned memory, streams, events) still read the device type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HostReads:
    """Whether a host read of a device tensor is free (True on CPU, False on CUDA: a sync)."""

    free: bool

    @classmethod
    def on(cls, device: torch.device | str) -> "HostReads":
        return cls(free=torch.device(device).type != "cuda")
