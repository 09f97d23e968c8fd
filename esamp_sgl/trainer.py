"""Test-time training of the distiller bank.

Per step: per-row loss = mean over H of (f(x) − y)² in fp32; loss of a slot = mean over its valid
rows; objective = sum over slots. Every row of a group trains its slot (not only the first
sample). Because the objective is a sum of per-slot terms and each row only reads its own slot's
parameters, the slots' gradients are independent: training slot A never changes slot B.

The optimiser (Adam, AdamW or SGD) is implemented on the stacked tensors: each slot has its own
step count and moments, slots that are not in the step's batch are not touched at all (no
weight decay, no momentum drift), and a freed slot's state is zeroed.

Staleness: `schedule()` launches step t's training after step t's token was sampled, and the
next prediction calls `wait()` first, so the prediction at step t uses parameters trained through
step t−1 exactly (k optimiser steps per decode step, all of them on step t−1's rows and earlier).

Execution (`mode`):
* 'sync' — run inline.
* 'thread' — one background worker (one intra-op thread); inputs are copied first, `wait()`
  joins the last job.
* 'cuda_stream' — the step runs on a side stream after an event recorded on the current stream;
  `wait()` makes the current stream wait on the completion event. No host sync anywhere: shapes
  are static (rows are deduplicated per slot without torch.unique, each row gathers its slot's
  weights) and non-finite losses are handled with torch.where.
On CPU (`static_shapes=False`) host reads are free, so rows without a slot are dropped, rows are
grouped per slot (weights read once per slot) and the optimiser update runs in place.

A slot whose loss is NaN/inf is reset to the init template, its optimiser state is zeroed and
the telemetry counts it; the other slots in the same step are trained normally.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from esamp_sgl.distiller import DistillerBank, distill_entries
from esamp_sgl.telemetry import Telemetry

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
MODES = ("sync", "thread", "cuda_stream")


class TestTimeTrainer:
    __test__ = False  # not a pytest class

    def __init__(self, bank: DistillerBank, telemetry: Telemetry, *, optimizer: str = "adam",
                 lr: float = 1e-3, weight_decay: float = 0.0, steps_per_decode: int = 1,
                 mode: str = "sync", static_shapes: bool | None = None) -> None:
        if optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"esamp_optimizer must be one of 'adam', 'adamw', 'sgd', got {optimizer!r}")
        if mode not in MODES:
            raise ValueError(f"esamp_train_mode must be one of {', '.join(map(repr, MODES))}, "
                             f"got {mode!r}")
        if mode == "cuda_stream" and bank.device.type != "cuda":
            raise ValueError("esamp_train_mode 'cuda_stream' needs a CUDA device, "
                             f"the bank is on {bank.device}")
        self.bank, self.telemetry = bank, telemetry
        self.optimizer, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.steps_per_decode = steps_per_decode
        self.mode = mode
        # torch.unique syncs on CUDA; the static variant costs rows (not unique slots) entries.
        self.static_shapes = bank.device.type == "cuda" if static_shapes is None else static_shapes
        with torch.inference_mode(False):
            self.step_count = torch.zeros(bank.slots + 1, device=bank.device)
            self.exp_avg: dict[str, Tensor] = {}
            self.exp_avg_sq: dict[str, Tensor] = {}
            if optimizer != "sgd":
                self.exp_avg = {k: torch.zeros_like(v) for k, v in bank.params.items()}
                self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in bank.params.items()}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._stream = None
        self._done = None
        self._cuda_pending = False
        if mode == "thread":
            # One intra-op thread for the worker (OpenMP thread counts are per calling thread):
            # the engine's own forward keeps its threads instead of being oversubscribed.
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esamp-train",
                                            initializer=torch.set_num_threads, initargs=(1,))
        elif mode == "cuda_stream":
            self._stream = torch.cuda.Stream(device=bank.device)
            self._done = torch.cuda.Event()

    # -- scheduling -----------------------------------------------------------------------------
    def schedule(self, source: Tensor, target: Tensor, slots: Tensor, valid: Tensor,
                 steps: int | None = None, lr: float | None = None, warm: bool = False) -> None:
        """Train on this step's rows: source/target [R, H] (any dtype), slots [R] int64
        (-1 = none), valid [R] bool. `steps` defaults to train_steps_per_decode; `warm=True`
        records the run as a warm start instead of decode training."""
        steps = self.steps_per_decode if steps is None else steps
        lr = self.lr if lr is None else lr
        dev = self.bank.device
        if self.mode == "sync":
            self._run(source, target, slots, valid, steps, lr, warm)
            return
        # Asynchronous modes: the engine may reuse its buffers, so take copies now.
        x = source.detach().to(device=dev, dtype=torch.float32, copy=True)
        y = target.detach().to(device=dev, dtype=torch.float32, copy=True)
        s = slots.detach().to(device=dev, dtype=torch.int64, copy=True)
        v = valid.detach().to(device=dev, dtype=torch.bool, copy=True)
        if self.mode == "thread":
            assert self._pool is not None
            self._pending = self._pool.submit(self._run, x, y, s, v, steps, lr, warm)
            return
        main = torch.cuda.current_stream(dev)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            self._run(x, y, s, v, steps, lr, warm)
        for t in (x, y, s, v):
            t.record_stream(self._stream)
        self._done.record(self._stream)
        self._cuda_pending = True

    def wait(self) -> None:
        """Order everything after this call behind the scheduled training (prediction calls it)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failure of the training step
        if self._cuda_pending:
            torch.cuda.current_stream(self.bank.device).wait_event(self._done)
            self._cuda_pending = False

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @torch.no_grad()
    def reset_slots(self, slot_ids: Tensor) -> None:
        """Zero the optimiser state of freed slots (call wait() first)."""
        with torch.inference_mode(False):
            idx = slot_ids.to(device=self.bank.device, dtype=torch.int64).reshape(-1)
            self.step_count.index_fill_(0, idx, 0.0)
            for state in (self.exp_avg, self.exp_avg_sq):
                for t in state.values():
                    t.index_fill_(0, idx, 0.0)

    # -- the step -------------------------------------------------------------------------------
    def _compact(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(entries [U] slot ids, row_to_entry [R]) with each slot in at most one entry."""
        if not self.static_shapes:
            entries, row_to_entry = torch.unique(idx, return_inverse=True)
            return entries, row_to_entry
        rows = idx.numel()
        order = torch.arange(rows, device=idx.device)
        first = torch.full((self.bank.slots + 1,), rows, device=idx.device, dtype=torch.int64)
        first = first.scatter_reduce(0, idx, order, reduce="amin", include_self=True)
        row_to_entry = first.index_select(0, idx)  # the first row that has the same slot
        entries = torch.where(row_to_entry == order, idx, torch.full_like(idx, self.bank.sink))
        return entries, row_to_entry

    def _run(self, source: Tensor, target: Tensor, slots: Tensor, valid: Tensor, steps: int,
             lr: float, warm: bool) -> None:
        with torch.inference_mode(False):
            self._train(source, target, slots, valid, steps, lr, warm)

    def _train(self, source: Tensor, target: Tensor, slots: Tensor, valid: Tensor, steps: int,
               lr: float, warm: bool) -> None:
        bank, dev = self.bank, self.bank.device
        slots = slots.to(device=dev, dtype=torch.int64)
        valid = valid.to(device=dev, dtype=torch.bool) & (slots >= 0)
        x = source.to(device=dev, dtype=torch.float32)
        y = target.to(device=dev, dtype=torch.float32)
        if not self.static_shapes:  # host reads are free here: drop the rows without a slot
            rows = valid.nonzero().squeeze(1)
            if rows.numel() == 0:
                return
            x, y, slots = x.index_select(0, rows), y.index_select(0, rows), slots.index_select(0, rows)
            valid = torch.ones(rows.numel(), dtype=torch.bool, device=dev)
        idx = torch.where(valid, bank.slot_index(slots), torch.full_like(valid, bank.sink,
                                                                        dtype=torch.int64))
        # Padding rows may hold garbage; zero them so that no NaN reaches a gradient.
        keep_row = valid.unsqueeze(-1)
        x = torch.where(keep_row, x, 0.0)
        y = torch.where(keep_row, y, 0.0)
        entries, row_to_entry = self._compact(idx)
        n_entries = entries.numel()
        count = torch.zeros(n_entries, device=dev).index_add_(0, row_to_entry, valid.float())
        active = (entries != bank.sink) & (count > 0)

        p = {k: v.index_select(0, entries) for k, v in bank.params.items()}
        m = {k: v.index_select(0, entries) for k, v in self.exp_avg.items()}
        s = {k: v.index_select(0, entries) for k, v in self.exp_avg_sq.items()}
        t = self.step_count.index_select(0, entries)
        bad = torch.zeros(n_entries, dtype=torch.bool, device=dev)
        taken = torch.zeros(n_entries, device=dev)
        first_loss = None
        for _ in range(steps):
            loss, grads = self._loss_and_grads(x, y, valid, p, row_to_entry, count, active & ~bad)
            if first_loss is None:
                first_loss = loss
            finite = torch.isfinite(loss)
            bad |= active & ~finite
            ok = active & ~bad
            with torch.no_grad():
                if not self.static_shapes and bool(ok.all()):
                    t = self._update_inplace(p, m, s, t, grads, lr)
                else:
                    t = self._update(p, m, s, t, grads, ok, lr)
            taken += ok.float()

        with torch.no_grad():
            if warm:  # the loss after the warm start, for telemetry
                last_loss = self._entry_loss(x, y, valid, p, row_to_entry, count)
            # Non-finite loss: back to the init template with fresh optimiser state.
            if self.static_shapes or bool(bad.any()):
                for k, v in p.items():
                    p[k] = torch.where(_bcast(bad, v), bank.template[k].unsqueeze(0), v)
                for state in (m, s):
                    for k, v in state.items():
                        state[k] = torch.where(_bcast(bad, v), 0.0, v)
                t = torch.where(bad, 0.0, t)
            for k, v in p.items():
                bank.params[k].index_copy_(0, entries, v)
            for k, v in m.items():
                self.exp_avg[k].index_copy_(0, entries, v)
            for k, v in s.items():
                self.exp_avg_sq[k].index_copy_(0, entries, v)
            self.step_count.index_copy_(0, entries, t)
            assert first_loss is not None
            counted = active & torch.isfinite(first_loss)
            if warm:
                self.telemetry.record_warm_start(entries, first_loss, last_loss, counted, steps)
                self.telemetry.record_train(entries, first_loss, torch.zeros_like(counted),
                                            torch.zeros_like(taken), bad)
            else:
                self.telemetry.record_train(entries, first_loss, counted, taken, bad)

    def _entry_loss(self, x: Tensor, y: Tensor, valid: Tensor, p: dict[str, Tensor],
                    row_to_entry: Tensor, count: Tensor) -> Tensor:
        pred = distill_entries(x, p, row_to_entry, grouped=not self.static_shapes)
        err = torch.where(valid, (pred - y).square().mean(-1), 0.0)
        total = torch.zeros_like(count).index_add(0, row_to_entry, err)
        return total / count.clamp(min=1.0)

    def _loss_and_grads(self, x: Tensor, y: Tensor, valid: Tensor, p: dict[str, Tensor],
                        row_to_entry: Tensor, count: Tensor,
                        trainable: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        with torch.enable_grad():
            loss = self._entry_loss(x, y, valid, leaves, row_to_entry, count)
            objective = torch.where(trainable & torch.isfinite(loss), loss, 0.0).sum()
            grads = torch.autograd.grad(objective, list(leaves.values()))
        return loss.detach(), dict(zip(leaves.keys(), grads))

    def _update_inplace(self, p: dict[str, Tensor], m: dict[str, Tensor], s: dict[str, Tensor],
                        t: Tensor, grads: dict[str, Tensor], lr: float) -> Tensor:
        """`_update` when every entry steps (CPU path): in-place ops, about half the memory
        passes. The tensors are the gathered per-entry copies, not the bank's."""
        wd = self.weight_decay
        t_new = t + 1.0
        b1, b2 = ADAM_BETAS
        bc1 = 1 - torch.pow(b1, t_new)
        bc2_sqrt = torch.sqrt(1 - torch.pow(b2, t_new))
        for k, param in p.items():
            g = grads[k]
            if self.optimizer == "sgd":
                param.add_(g + wd * param if wd else g, alpha=-lr)
                continue
            if self.optimizer == "adam" and wd:
                g = g.add(param, alpha=wd)
            elif self.optimizer == "adamw" and wd:
                param.mul_(1 - lr * wd)
            m[k].mul_(b1).add_(g, alpha=1 - b1)
            s[k].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = s[k].sqrt().div_(_bcast_vals(bc2_sqrt, param)).add_(ADAM_EPS)
            param.addcdiv_(m[k] * _bcast_vals(lr / bc1, param), denom, value=-1.0)
        return t_new

    def _update(self, p: dict[str, Tensor], m: dict[str, Tensor], s: dict[str, Tensor],
                t: Tensor, grads: dict[str, Tensor], ok: Tensor, lr: float) -> Tensor:
        """One optimiser step on the entries where `ok`, in place on the dicts; returns new t.
        Masked with torch.where so that it needs no host sync (the GPU path)."""
        wd = self.weight_decay
        t_new = t + ok.float()
        b1, b2 = ADAM_BETAS
        for k in p:
            param, g = p[k], grads[k]
            mask = _bcast(ok, param)
            if self.optimizer == "sgd":
                step = g + wd * param if wd else g
                p[k] = torch.where(mask, param - lr * step, param)
                continue
            if self.optimizer == "adam" and wd:
                g = g + wd * param
            m_new = b1 * m[k] + (1 - b1) * g
            s_new = b2 * s[k] + (1 - b2) * g * g
            tt = _bcast_vals(t_new.clamp(min=1.0), param)
            bc1 = 1 - torch.pow(b1, tt)
            bc2_sqrt = torch.sqrt(1 - torch.pow(b2, tt))
            base = param * (1 - lr * wd) if (self.optimizer == "adamw" and wd) else param
            new = base - (lr / bc1) * m_new / (torch.sqrt(s_new) / bc2_sqrt + ADAM_EPS)
            p[k] = torch.where(mask, new, param)
            m[k] = torch.where(mask, m_new, m[k])
            s[k] = torch.where(mask, s_new, s[k])
        return t_new


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(mask.shape[0], *([1] * (like.dim() - 1)))


def _bcast_vals(v: Tensor, like: Tensor) -> Tensor:
    return v.view(v.shape[0], *([1] * (like.dim() - 1)))
