"""Test-time training of the distiller bank.

Per step: per-row loss = mean over H of (f(x) − y)² in fp32 (f: the bank's architecture, whose forward
and gradient live in its own module: lowrank.py, swiglu.py); loss of a slot = mean over its valid
rows; objective = sum over slots. Every row of a group trains its slot (not only the first
sample). Because the objective is a sum of per-slot terms and each row only reads its own slot's
parameters, the slots' gradients are independent: training slot A never changes slot B.

The optimiser (Adam, AdamW or SGD) is implemented on the stacked tensors: each slot has its own
step count and moments, slots that are not in the step's batch are not touched at all (no
weight decay, no momentum drift), and a freed slot's state is zeroed.

Staleness: `schedule()` launches step t's training after step t's token was sampled, and the
next prediction calls `wait()` first, so the prediction at step t uses parameters trained through
step t−1 exactly (k optimiser steps per decode step, all of them on step t−1's rows and earlier).

Grouping: the rows to train come as a host-side plan (`layout.SlotLayout`: the engine knows each
row's slot on the host), so the rows of each slot are packed into a padded [U, n, H] block and
every per-slot tensor is read once per *group*: one gather of the U parameter rows for the forward
and backward (one flat fp32 row per slot, distiller.py), and one fused Adam step (torch's
`_fused_adam_`, a multi-tensor kernel) that updates the bank's rows, moments and step counts in
place: no gather or write-back of the optimiser state. Bytes per step scale with the groups, not
the rows. Without a plan, one is built from a host read of `slots` (free on CPU; one sync on CUDA).

Execution (`mode`):
* 'sync' — run inline.
* 'cuda_stream' — the step runs on a side stream after the work queued on the current stream;
  `wait()` makes the calling stream wait on the completion event, once per stream and schedule
  (streams.StreamFence: SGLang calls wait() from the forward stream and, freeing a slot, from the
  scheduler's; each must be ordered, not just the first to ask).
* 'cpu_thread' — the CPU's side stream: the step runs on one worker thread while the engine's
  thread goes on with the next forward (torch's kernels release the GIL); `wait()` joins it. Every
  reader of the bank, the optimiser state or the trainer's telemetry columns calls wait() first, as
  on CUDA; the worker writes nothing else. What the step raised is kept and raised by the next
  `wait(raise_failure=True)` (the next prediction's, inside the sampler's guard), never by a
  report or a slot reset on SGLang's request path. It pays only where a core is left over
  (explorer.resolve_train_mode).

Host reads (`host_reads`, device.HostReads). Where they are not free (CUDA) there is no host sync
anywhere: the layout comes from the host plan and non-finite losses are handled with device-side
index writes: the slots whose loss was not finite are collected on the device and reset together
every NONFINITE_RESET_EVERY training steps (resetting only the bad ones would need a host read;
resetting through a sink row every step writes a parameter set and its moments per entry, ~4× the
optimiser's own parameter writes). Until then such a slot predicts non-finite values, so its rows
sample stock (step.applies) and its gradient is excluded. Where host reads are free (CPU) the
non-finite reset runs at once, and only when a loss was not finite.

A slot whose loss is NaN/inf is reset to the init template, its optimiser state is zeroed and
the telemetry counts it; the other slots in the same step are trained normally.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

import numpy as np
import torch
from torch import Tensor

from esamp_sgl.core.architectures import split_flat
from esamp_sgl.core.config import check_field
from esamp_sgl.core.device import HostReads
from esamp_sgl.core.distiller import DistillerBank, Scratch, bank_block_rows, into_bank_blocks
from esamp_sgl.core.layout import SlotLayout, layout_from_row_slots, layout_of_rows, to_device
from esamp_sgl.core.streams import StreamFence
from esamp_sgl.core.telemetry import Telemetry

T = TypeVar("T")

ADAM_BETAS = (0.9, 0.999)
NONFINITE_RESET_EVERY = 32  # training steps between resets of non-finite slots (host reads not free)
MODES = ("sync", "cuda_stream", "cpu_thread")  # esamp_train_mode once "auto" is resolved (explorer.py)


def check_mode_device(mode: str, device: torch.device) -> None:
    """The side stream of each device: cuda_stream needs CUDA, cpu_thread the CPU."""
    need = {"cuda_stream": "cuda", "cpu_thread": "cpu"}.get(mode)
    if need is not None and device.type != need:
        raise ValueError(f"esamp_train_mode {mode!r} needs a {need.upper()} device, got {device}")


def entry_loss(diff: Tensor, coef: Tensor) -> Tensor:
    """[U] the training loss of each entry: the mean over its rows of mean_H (f(x) − y)², from
    diff = f(x) − y [U, n, H] and coef [U, n] (1/count at its rows, 0 at padding)."""
    return (diff.square().mean(-1) * coef).sum(-1)


class TestTimeTrainer:
    __test__ = False  # not a pytest class

    def __init__(self, bank: DistillerBank, telemetry: Telemetry, *, optimizer: str = "adam",
                 lr: float = 1e-3, weight_decay: float = 0.0, steps_per_decode: int = 1,
                 mode: str = "sync", host_reads: HostReads | None = None, adam_eps: float = 1e-8,
                 grad_clip: float = 0.0, train_every: int = 1) -> None:
        check_field("optimizer", optimizer)
        if mode not in MODES:
            raise ValueError(f"esamp_train_mode must be one of {', '.join(map(repr, MODES))}, "
                             f"got {mode!r}")
        check_mode_device(mode, bank.device)
        self.bank, self.telemetry = bank, telemetry
        self.optimizer, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.adam_eps = check_field("adam_eps", adam_eps)
        self.grad_clip = check_field("grad_clip", grad_clip)  # per group (entry) and step; 0 = off
        self.steps_per_decode = steps_per_decode
        # Cadence: train every k-th scheduled step on the rows of the last k (a mini-batch, §4.3 of the
        # paper); the rows in between wait here as [m, H] copies with their slots on the host.
        self.train_every = check_field("train_every", train_every)
        self._pending: list[tuple[Tensor, Tensor, np.ndarray]] = []
        self._train_calls = 0
        self.mode = mode
        # Not free (the CUDA path): never read the device on the host inside a step. Default: the
        # bank's, the same object (the Explorer's), so that flipping it switches both.
        self.host_reads = bank.host_reads if host_reads is None else host_reads
        with torch.inference_mode(False):
            self.step_count = torch.zeros(bank.slots + 1, device=bank.device)
            self.nonfinite = torch.zeros(bank.slots + 1, device=bank.device)  # slots to reset (flush)
            self.step_rows = self.step_count.unbind(0)  # 0-d views: Adam's per-slot step counts
            # Moments as flat [slots + 1, P] blocks like the bank's parameters; the dicts are views.
            self.exp_avg_flat: Tensor | None = None
            self.exp_avg_sq_flat: Tensor | None = None
            self.exp_avg: dict[str, Tensor] = {}
            self.exp_avg_sq: dict[str, Tensor] = {}
            if optimizer != "sgd":
                self.exp_avg_flat = torch.zeros_like(bank.flat)
                self.exp_avg_sq_flat = torch.zeros_like(bank.flat)
                self.exp_avg = split_flat(self.exp_avg_flat, bank.layout)
                self.exp_avg_sq = split_flat(self.exp_avg_sq_flat, bank.layout)
                self.m_rows = self.exp_avg_flat.unbind(0)
                self.s_rows = self.exp_avg_sq_flat.unbind(0)
        # Kept buffers for the step's parameter gather and gradient (CPU; distiller.Scratch says why).
        self._scratch_params, self._scratch_grad = Scratch(bank.device), Scratch(bank.device)
        self._stream = None
        # CUDA: where the newest write to the bank and optimiser state ends (training, or a slot
        # reset through mark_written), and which streams already wait for it.
        self._writes: StreamFence | None = None
        if bank.device.type == "cuda":
            self._writes = StreamFence(torch.cuda.Event)
        if mode == "cuda_stream":
            self._stream = torch.cuda.Stream(device=bank.device)
        self._worker: ThreadPoolExecutor | None = None
        # cpu_thread: the work in flight on the worker, in order: (future, is a training step)
        self._running: list[tuple[Future, bool]] = []
        self._failure: BaseException | None = None  # cpu_thread: what a finished step raised, unreported
        if mode == "cpu_thread":
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esamp-train")

    # -- scheduling -----------------------------------------------------------------------------
    def schedule(self, source: Tensor, target: Tensor, slots: Tensor, valid: Tensor,
                 steps: int | None = None, lr: float | None = None, warm: bool = False,
                 layout: SlotLayout | None = None) -> None:
        """Train on this step's rows: source/target [R, H] (any dtype), slots [R] int64
        (-1 = none), valid [R] bool. `layout`: the host plan of the rows to train (the rows with
        valid & slot >= 0; `SlotLayout.train` of the step's plan); None = build it from a host
        read of slots/valid. `steps` defaults to train_steps_per_decode; `warm=True` records the
        run as a warm start instead of decode training."""
        steps = self.steps_per_decode if steps is None else steps
        lr = self.lr if lr is None else lr
        dev = self.bank.device
        if layout is None:
            layout = layout_of_rows(slots, valid)
            if layout is None:
                return
        if self.train_every > 1 and not warm:
            batch = self._gather_cadence(source, target, layout)
            if batch is None:
                return
            source, target, layout = batch
        # The group blocks [U·n, H] (a copy: the engine may reuse its buffers in the async modes;
        # made outside inference mode, so that autograd may save them).
        with torch.inference_mode(False):
            x = source.detach().to(dev).index_select(0, layout.gather)
            y = target.detach().to(dev).index_select(0, layout.gather)
        self.wait()  # after every earlier write, e.g. a slot reset queued on another stream
        if self._worker is not None:
            self._running.append((self._worker.submit(self._run, x, y, layout, steps, lr, warm), True))
            return
        if self.mode == "sync":
            self._run(x, y, layout, steps, lr, warm)
            if self._writes is not None:
                self._writes.record(torch.cuda.current_stream(dev))
            return
        main = torch.cuda.current_stream(dev)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            self._run(x, y, layout, steps, lr, warm)
        for t in (x, y, *layout.buffers()):
            t.record_stream(self._stream)
        self._writes.record(self._stream)

    def _gather_cadence(self, source: Tensor, target: Tensor,
                        layout: SlotLayout) -> tuple[Tensor, Tensor, SlotLayout] | None:
        """Keep this step's trainable rows; on every k-th step return all kept rows with one plan
        over them (built from the host slots: no device read), else None."""
        dev = self.bank.device
        rows = np.flatnonzero(layout.row_slots >= 0)
        (index,) = to_device([rows.astype(np.int64)], dev)
        with torch.inference_mode(False):
            self._pending.append((source.detach().to(dev).index_select(0, index),
                                  target.detach().to(dev).index_select(0, index), layout.row_slots[rows]))
        if len(self._pending) < self.train_every:
            return None
        xs, ys, slot_lists = zip(*self._pending)
        self._pending = []
        merged = layout_from_row_slots(np.concatenate(slot_lists), dev)
        if merged is None:  # every kept row's slot was freed meanwhile
            return None
        return torch.cat(xs), torch.cat(ys), merged

    def forget_pending(self, slots: list[int]) -> None:
        """Rows kept for the cadence whose slot is freed must not train the slot's next group."""
        gone = np.asarray(slots, dtype=np.int64)
        self._pending = [(x, y, np.where(np.isin(s, gone), -1, s)) for x, y, s in self._pending]

    def run_beside(self, fn: Callable[[], T]) -> Future | None:
        """cpu_thread: run `fn` on the worker after everything queued there (the training step in
        flight), while the engine's thread goes on; wait() joins it as it joins training (its
        exception is the caller's, from the future, not a training failure). None in the other
        modes: there is no worker to run it beside the engine."""
        if self._worker is None:
            return None
        future = self._worker.submit(fn)
        self._running.append((future, False))
        return future

    def wait(self, raise_failure: bool = False) -> None:
        """Order everything queued on the calling stream after this call behind the scheduled
        training and any write marked by mark_written (prediction calls it; so does a slot reset).
        Every stream that calls it is ordered, each once per write (device-side; no host sync).
        cpu_thread: blocks until the step in flight is done; with `raise_failure`, raises (once) what
        a step raised (sync and cuda_stream raise at schedule())."""
        running, self._running = self._running, []
        for future, training in running:
            failure = future.exception()  # waits
            if training:
                self._failure = failure or self._failure
        if raise_failure and self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if self._writes is not None:
            self._writes.order(torch.cuda.current_stream(self.bank.device))

    def mark_written(self) -> None:
        """The current stream just wrote the bank or optimiser state outside training (a slot
        reset): every stream that calls wait() from now on is ordered behind that write, as behind
        training, so that the next step on the forward stream never reads the slot half reset."""
        if self._writes is not None:
            self._writes.record(torch.cuda.current_stream(self.bank.device))

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)

    @torch.no_grad()
    def reset_slots(self, slot_ids: Tensor) -> None:
        """Zero the optimiser state of freed slots (call wait() first)."""
        with torch.inference_mode(False):
            idx = slot_ids.to(device=self.bank.device, dtype=torch.int64).reshape(-1)
            self._zero_state(idx)
            self.nonfinite.index_fill_(0, idx, 0.0)  # a reset slot has nothing left to reset

    def _zero_state(self, idx: Tensor) -> None:
        """Fresh optimiser state (moments, step count) for the bank rows `idx`."""
        for state in (self.exp_avg_flat, self.exp_avg_sq_flat):
            if state is not None:
                state.index_fill_(0, idx, 0.0)
        self.step_count.index_fill_(0, idx, 0.0)

    # -- the step -------------------------------------------------------------------------------
    def _run(self, x: Tensor, y: Tensor, layout: SlotLayout, steps: int, lr: float,
             warm: bool) -> None:
        with torch.inference_mode(False):
            self._train(x, y, layout, steps, lr, warm)

    def _train(self, x: Tensor, y: Tensor, layout: SlotLayout, steps: int, lr: float,
               warm: bool) -> None:
        """The recipe. x, y: [U·n, H] the rows of the plan's padded blocks (any dtype), laid out once;
        per step: loss and gradients of every entry, one fused optimiser step; then reset the entries
        whose loss was not finite, and record the telemetry. When the layout's groups are a good part of
        the bank (DistillerBank.reads_whole_bank) the blocks are the whole bank's, read in place (no
        gather of parameters); the entries' losses and gradients are then taken from them."""
        bank = self.bank
        u, n, hidden = layout.size, layout.width, bank.hidden
        entries = layout.entry_index
        coef = layout.weight / layout.count.unsqueeze(-1)  # [U, n]: 1/count at rows, 0 at padding
        whole = bank.reads_whole_bank(layout)
        if whole:
            x, y, coef = self._bank_blocks(x, y, coef, layout)
        x = x.to(torch.float32).view(-1, n, hidden)
        y = y.to(torch.float32).view(-1, n, hidden)
        rows = [bank.rows[e] for e in layout.entries]  # the bank's rows, updated in place
        bad = torch.zeros(u, dtype=torch.bool, device=bank.device)
        taken = torch.zeros(u, device=bank.device)
        first_loss = counted = None
        for _ in range(steps):
            loss, finite, grad = self._loss_and_grad(x, y, None if whole else layout, coef)
            if whole:  # the entries' rows of the bank's blocks
                loss, finite = loss.index_select(0, entries), finite.index_select(0, entries)
                grads = [grad[e] for e in layout.entries]
            else:
                grads = list(grad.unbind(0))
            if first_loss is None:
                first_loss, counted = loss, finite
            bad |= ~finite
            taken += (~bad).float()
            with torch.no_grad():
                self._optimizer_step(layout, rows, grads, lr)

        with torch.no_grad():
            if warm:  # the loss after the warm start, for telemetry
                last_loss = (self._entry_loss(x, y, coef, bank.params).index_select(0, entries) if whole
                             else self._entry_loss(x, y, coef, bank.entry_params(layout)))
            self._reset_nonfinite(entries, bad)
            assert first_loss is not None and counted is not None
            if warm:
                self.telemetry.record_warm_start(entries, first_loss, last_loss, counted, steps)
                self.telemetry.record_train(entries, first_loss, torch.zeros_like(counted),
                                            torch.zeros_like(taken), bad)
            else:
                self.telemetry.record_train(entries, first_loss, counted, taken, bad)

    def _reset_nonfinite(self, entries: Tensor, bad: Tensor) -> None:
        """Entries whose loss was not finite go back to the init template with fresh optimiser state:
        at once where host reads are free (CPU); else collected and reset every NONFINITE_RESET_EVERY
        steps."""
        if self.host_reads.free:
            if bool(bad.any()):
                self._reset_to_template(torch.where(bad, entries, self.bank.sink))
            return
        self.nonfinite.index_add_(0, entries, bad.float())
        self._train_calls += 1
        if self._train_calls % NONFINITE_RESET_EVERY == 0:
            self.flush_nonfinite()

    def flush_nonfinite(self) -> None:
        """Reset the collected non-finite slots (no host read): every bank row writes,
        the collected ones their own row, the others the sink (whose content nothing reads)."""
        bank = self.bank
        every = torch.arange(bank.slots + 1, device=bank.device)
        with torch.no_grad():
            self._reset_to_template(torch.where(self.nonfinite > 0, every, bank.sink))
            self.nonfinite.zero_()

    def _reset_to_template(self, target: Tensor) -> None:
        bank = self.bank
        bank.flat.index_copy_(0, target, bank.template_flat.unsqueeze(0).expand(target.shape[0], -1))
        self._zero_state(target)

    def _entry_loss(self, x: Tensor, y: Tensor, coef: Tensor, p: dict[str, Tensor]) -> Tensor:
        """[U] entry_loss of the Distiller with parameters `p` (the architecture's forward) on (x, y)."""
        return entry_loss(self.bank.arch.forward(x, p) - y, coef)

    def _bank_blocks(self, x: Tensor, y: Tensor, coef: Tensor,
                     layout: SlotLayout) -> tuple[Tensor, Tensor, Tensor]:
        """The plan's entry-major blocks moved to the whole bank's slot-major blocks [(slots + 1)·n]
        (the other slots' blocks: zero rows of weight 0, whose gradients nothing reads)."""
        n, blocks = layout.width, self.bank.slots + 1
        dest = bank_block_rows(layout.entry_index.unsqueeze(-1), torch.arange(n, device=coef.device),
                               n).reshape(-1)  # [U·n]
        return (into_bank_blocks(x, dest, blocks, n), into_bank_blocks(y, dest, blocks, n),
                into_bank_blocks(coef.reshape(-1), dest, blocks, n).view(blocks, n))

    def _loss_and_grad(self, x: Tensor, y: Tensor, layout: SlotLayout | None,
                       coef: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(loss [U], loss is finite [U], gradient [U, P]) with one read of the U parameter rows
        (DistillerBank.entry_params; `layout` None: the whole bank's rows in place). The
        backward pass is the architecture's own (written out, no autograd graph): each gradient goes
        straight into its slice of one flat [U, P] buffer, which the fused optimiser reads as one row
        per slot. An entry whose loss is not finite contributes nothing (its own gradient may be NaN; it
        is reset afterwards). With grad_clip, each entry's gradient is clipped to that norm."""
        bank = self.bank
        hidden = x.shape[-1]
        p = bank.params if layout is None else bank.entry_params(layout, self._scratch_params)
        grad = self._scratch_grad.buffer(x.shape[0], bank.numel)  # every entry written below
        out, saved = bank.arch.forward_saving(x, p)
        diff = out - y
        loss = entry_loss(diff, coef)
        # backward of Σ_u loss_u over the finite entries
        finite = (loss * 0) == 0  # isfinite in 2 kernels
        scale = torch.where(finite.unsqueeze(-1), coef, 0.0) * (2.0 / hidden)
        bank.arch.backward(diff * scale.unsqueeze(-1), saved, p, split_flat(grad, bank.layout))
        if self.grad_clip > 0:  # torch's clip_grad_norm_ per entry: g · min(1, c / (‖g‖ + 1e-6))
            norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
            grad.mul_((self.grad_clip / (norm + 1e-6)).clamp(max=1.0))
        return loss, finite, grad

    def _optimizer_step(self, layout: SlotLayout, rows: list[Tensor], grads: list[Tensor],
                        lr: float) -> None:
        """One optimiser step of every entry, in place on the bank's rows (`grads`: one [P] row per
        entry). Each slot has its own step count (bias correction); an entry whose loss was not
        finite gets a NaN update here and is reset after the last step."""
        wd = self.weight_decay
        self.step_count.index_add_(0, layout.entry_index, torch.ones_like(layout.count))
        if self.optimizer == "sgd":
            if wd:
                torch._foreach_add_(grads, rows, alpha=wd)
            torch._foreach_add_(rows, grads, alpha=-lr)
            return
        m = [self.m_rows[e] for e in layout.entries]
        s = [self.s_rows[e] for e in layout.entries]
        t = [self.step_rows[e] for e in layout.entries]
        fused = torch._fused_adamw_ if self.optimizer == "adamw" else torch._fused_adam_
        fused(rows, grads, m, s, [], t, lr=lr, beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1],
              weight_decay=wd, eps=self.adam_eps, amsgrad=False, maximize=False)

