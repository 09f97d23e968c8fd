"""The Explorer owns one model's ESamp state: distiller bank, group table, trainer, telemetry,
the ESamp RNG and the resolved backends. The per-step recipe is `esamp_sgl.core.step.explore_step`.

Lifecycle, driven by the engine from request metadata (all host-side, O(1)):
  join_group(key) when a request joins its fork group (None = bank full → the request is sampled
  stock, and so is every later member while the group lives),
  warm_start_group(key, source, target) after its prefill (if prefill_warm_start is on),
  report(key) whenever wanted: the group's telemetry (reads the device; not on the hot path),
  leave_group(key) once per join when the request finishes or is aborted; the last member's leave
  frees the slot, which is re-initialised (parameters, optimiser state, telemetry).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.device import HostReads
from esamp_sgl.core.distiller import DistillerBank
from esamp_sgl.core.gate import FitGate
from esamp_sgl.core.groups import GroupTable
from esamp_sgl.core.reweight import random_prior_logits
from esamp_sgl.core.telemetry import StepMarks, Telemetry
from esamp_sgl.core.trainer import TestTimeTrainer, check_mode_device
from esamp_sgl.core.warm_start import prefill_warm_start, svd_template
from esamp_sgl.core.width import CandidateWidth

def spare_cpu() -> bool:
    """torch's threads leave a core of this process's CPUs free for the training thread."""
    return torch.get_num_threads() < len(os.sched_getaffinity(0))


def resolve_train_mode(mode: str, device: torch.device) -> str:
    """`auto`: a side stream on CUDA; on CPU the training thread where a core is left over, else inline.
    The thread costs where the forward already has every core: with torch on both of 2 cores, step ms
    inline vs thread were 36.3 vs 40.7 (8 rows, H 576), 247.2 vs 254.0 (64 rows), 194.5 vs 206.6 (8 rows,
    H 3584); with a core to spare see docs/performance.md § 9."""
    if mode == "auto":
        if device.type == "cuda":
            return "cuda_stream"
        return "cpu_thread" if spare_cpu() else "sync"
    check_mode_device(mode, device)
    return mode


def resolve_backend(backend: str) -> str:
    """`auto` is `torch` on every device: the only candidate path, the one with SGLang's support
    and the cheaper one (config.py BACKENDS says why FlashInfer's was removed). The allowed names
    are checked by ESampConfig."""
    return "torch" if backend == "auto" else backend


class Explorer:
    def __init__(self, config: ESampConfig, hidden_size: int, lm_head_weight: Tensor,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        config.validate_for_model(hidden_size)
        if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden_size:
            raise ValueError(f"lm_head_weight must be [vocab, {hidden_size}], "
                             f"got {tuple(lm_head_weight.shape)}")
        self.config = config
        self.hidden_size = hidden_size
        self.device = torch.device(device) if device is not None else lm_head_weight.device
        # The model's activation dtype, for the engine's reference: taps of any dtype are
        # accepted and cast to fp32, and the distiller's master weights are always fp32.
        self.dtype = dtype if dtype is not None else lm_head_weight.dtype
        self.lm_head_weight = lm_head_weight.to(self.device)
        self.groups = GroupTable(config.max_groups)
        # Whether host reads are free on this device (CPU): one object, shared by the bank and the
        # trainer; the step reads it too (device.py lists what it decides).
        self.host_reads = HostReads.on(self.device)
        self.bank = DistillerBank(config.max_groups, hidden_size, config.rank, self.device,
                                  config.seed, host_reads=self.host_reads, distiller=config.distiller,
                                  blocks=config.distiller_blocks)
        self.telemetry = Telemetry(config.max_groups, hidden_size, self.device)
        self.gate = FitGate(config.max_groups, hidden_size, self.device, window=config.gate_window,
                            r2_full=config.gate_r2_full, enabled=config.fit_gate)
        self.train_mode = resolve_train_mode(config.train_mode, self.device)
        self.trainer = TestTimeTrainer(
            self.bank, self.telemetry, optimizer=config.optimizer, lr=config.lr,
            weight_decay=config.weight_decay, steps_per_decode=config.train_steps_per_decode,
            mode=self.train_mode, adam_eps=config.adam_eps, grad_clip=config.grad_clip,
            train_every=config.train_every)
        self.backend = resolve_backend(config.backend)
        # ESamp's own draws never touch the engine's RNG, so stock rows stay bit-identical.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        # d on the candidates: a gather of their LM-head rows or one GEMM, by a cost model on the
        # step's shapes for this machine (esamp_sgl/core/dlogits.py); "gather"/"gemm" force one.
        self.d_method = "auto"
        self.d_machine = self.device.type
        # The candidate width where host reads are not free: it follows the data (width.py).
        self.candidate_width = CandidateWidth(min(config.max_candidates, lm_head_weight.shape[0]), self.device)
        # [max_groups, V] tokens generated per group, for the group_* baseline rules only:
        # allocated when such a rule first runs (39 MB at 64 groups x 152k vocabulary).
        self.group_counts: Tensor | None = None
        self._random_prior: Tensor | None = None  # [V], the random_prior control's vector
        self._warm_started: set[int] = set()
        self._warm_start_failed: set[int] = set()  # slots whose warm start raised (telemetry)
        self._marks: StepMarks | None = None  # CUDA: where recent steps end (telemetry reads)
        self._read_stream = None

    # -- per-request options --------------------------------------------------------------------
    def row_options(self, request: ExploreRequest) -> tuple[float, str, bool]:
        """(beta, rule, train) for a request: its overrides, else the server defaults."""
        beta = self.config.beta if request.beta is None else request.beta
        rule = self.config.rule if request.rule is None else request.rule
        train = self.config.training if request.train is None else request.train
        return beta, rule, train

    # -- signals of the controls ----------------------------------------------------------------
    def random_prior_on(self, cand_ids: Tensor) -> Tensor:
        """The random_prior control's fixed per-token values on the candidates [R, K]. Drawn wide
        (std 10 nats) so that the tilt bound, not the draw, sets its spread, as for d."""
        if self._random_prior is None:
            self._random_prior = random_prior_logits(self.lm_head_weight.shape[0], 10.0,
                                                     self.config.seed, self.device)
        return self._random_prior[cand_ids]

    # -- group token counts (baseline rules) -----------------------------------------------------
    def group_counts_on(self, slots: Tensor, cand_ids: Tensor) -> Tensor:
        """counts[slot(r), cand_ids[r, k]] as float32 [R, K] (0 for rows without a slot)."""
        if self.group_counts is None:
            vocab = self.lm_head_weight.shape[0]
            self.group_counts = torch.zeros(self.config.max_groups, vocab, device=self.device)
        vocab = self.group_counts.shape[1]
        flat = slots.clamp(min=0).unsqueeze(-1) * vocab + cand_ids  # gather K per row, not V
        return self.group_counts.view(-1)[flat] * (slots >= 0).unsqueeze(-1)

    def count_group_tokens(self, slots: Tensor, tokens: Tensor, valid: Tensor) -> None:
        if self.group_counts is None:
            return
        # Masked by weight, not by indexing: boolean indexing would sync the host on CUDA.
        self.group_counts.index_put_((slots.clamp(min=0), tokens.to(torch.int64)),
                                     valid.to(self.group_counts.dtype), accumulate=True)

    # -- group lifecycle ------------------------------------------------------------------------
    @property
    def bank_full_count(self) -> int:
        """Joins refused a slot because the bank was full (GroupTable.refusals)."""
        return self.groups.refusals

    def join_group(self, key: str) -> int | None:
        """A new member of `key`: its slot, or None when the group is sampled stock (bank full)."""
        return self.groups.join(key)

    def leave_group(self, key: str) -> int | None:
        """A member of `key` left; the slot if it was the last member (the slot is reset here)."""
        slot = self.groups.leave(key)
        if slot is not None:
            self._reset_slots([slot])
        return slot

    def _reset_slots(self, slots: list[int]) -> None:
        self._order_after_queued_steps()  # nothing in flight may write the slot after its reset
        idx = torch.tensor(slots, dtype=torch.int64)
        idx = (idx.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda"
               else idx.to(self.device))
        self.bank.reset_slots(idx)
        self.trainer.reset_slots(idx)
        self.trainer.forget_pending(slots)
        self.telemetry.reset(idx)
        self.gate.reset(idx)
        if self.group_counts is not None:
            self.group_counts[idx] = 0
        self._warm_started.difference_update(slots)
        self._warm_start_failed.difference_update(slots)
        self.trainer.mark_written()  # the next step, on whichever stream, sees the slot reset

    def _order_after_queued_steps(self) -> None:
        """Order the current stream (device-side, no host sync) behind the newest decode step
        queued and its training. SGLang's overlap scheduler frees a finished request on its own
        stream while the next step is already queued on the forward stream: a reset that did not
        wait for that step's writes (telemetry, gate, group counts; training for groups that
        train) would be undone by them, and the next group in the slot would inherit them.
        Steps run in order on one forward stream, so the newest step's event covers the older."""
        if self.device.type == "cuda" and self._marks is not None:
            pair = self._marks.newest()
            if pair is not None:
                StepMarks.order(torch.cuda.current_stream(self.device), pair)
        self.trainer.wait()

    def rebind_lm_head(self, lm_head_weight: Tensor) -> None:
        """Use this LM head from now on (after the engine updated its weights). Same shape only:
        an online weight update cannot change the vocabulary or the hidden size."""
        if tuple(lm_head_weight.shape) != tuple(self.lm_head_weight.shape):
            raise ValueError(f"the new LM head is {tuple(lm_head_weight.shape)}, "
                             f"the Explorer was built for {tuple(self.lm_head_weight.shape)}")
        self.trainer.wait()  # no step in flight reads the old head after this
        self.lm_head_weight = lm_head_weight.to(self.device)

    def reset_live_groups(self) -> int:
        """Re-initialise the Distiller, optimiser state, gate and telemetry of every live group in
        place (members stay members; the gate is shut until the group measures its fit again, and
        the prefill warm start may run again). Returns how many groups were reset."""
        slots = self.groups.slots()
        if slots:
            self._reset_slots(slots)
        return len(slots)

    def needs_warm_start(self, key: str) -> bool:
        slot = self.groups.slot_of(key)
        return self.config.prefill_warm_start and slot is not None and slot not in self._warm_started

    def warm_start_group(self, key: str, source: Tensor, target: Tensor) -> bool:
        """Prefill warm start on the prompt's (source, target) pairs [P, H]; once per group and
        only if config.prefill_warm_start. Then the fit on those pairs seeds the group's gate and
        telemetry. Returns whether it ran.

        The P rows are planned on the host as one group of the slot (warm_start.prompt_plan): the
        training and the fit read the slot's parameters once per step, and nothing here reads the
        device on the host (on CUDA: no sync).

        If it raises (e.g. torch.OutOfMemoryError, or pairs of the wrong hidden size), the slot is
        put back to its init (a half-trained Distiller must not steer), the group is not tried
        again, its telemetry says `warm_start_failed: true`, and the exception propagates for the
        engine to count (runtime_patch/hooks.py). The group then decodes without a warm start: its
        gate is shut (β_eff = 0, every token stock's) until decode steps have measured the fit
        over `gate_window` positions; with fit_gate off it steers from init at once."""
        if not self.needs_warm_start(key) or source.shape[0] == 0:
            return False
        slot = self.groups.slot_of(key)
        self._warm_started.add(slot)
        try:
            plan = prefill_warm_start(self.trainer, slot, source, target, self.config.warm_start_steps,
                                      self.config.warm_start_lr)
            assert plan is not None  # P > 0 was checked above
            self.trainer.wait(raise_failure=True)
            h_hat = self.bank(source, plan.slots, layout=plan.layout)
            r2 = self.gate.seed(plan.slots[0], h_hat, target)
            self.telemetry.record_warm_fit(plan.slots[:1], r2, source.shape[0])
        except Exception:
            self._undo_failed_warm_start(slot)
            raise
        return True

    def _undo_failed_warm_start(self, slot: int) -> None:
        """Back to init after a failed warm start, and remembered as failed (not retried)."""
        try:
            self._reset_slots([slot])
        except Exception:  # e.g. still out of memory: the original error is the one to report
            pass
        self._warm_started.add(slot)
        self._warm_start_failed.add(slot)

    def load_svd_template(self, w_gate: Tensor | None, w_up: Tensor, w_down: Tensor) -> bool:
        """SVD warm start from the FFN weights of the layer the engine chose (usually the last);
        only if config.svd_warm_start, and only before any group exists. Returns whether it ran."""
        if not self.config.svd_warm_start:
            return False
        if len(self.groups):
            raise RuntimeError("load_svd_template must be called before any group is acquired")
        self.trainer.wait()
        self.bank.load_template(svd_template(w_gate, w_up, w_down, self.bank.rank), reset_all=True)
        return True

    # -- host reads -----------------------------------------------------------------------------
    def report(self, key: str) -> dict:
        """The group's counters (see Telemetry.snapshot) and its gate, read with one device→host
        copy; slot None = the group has no slot."""
        slot = self.groups.slot_of(key)
        if slot is None:
            return {"group": key, "slot": None}
        out = {"group": key, "slot": slot, "members": self.groups.members(key),
               "members_joined": self.groups.joined(key), "profile": self.config.profile,
               "profile_overrides": self.config.profile_overrides(), "settings": self.config.method()}
        # The gate as the group's next token would see it, and the held-out fit behind it.
        out.update(self.telemetry.snapshot(slot, extra={"gate": lambda: self.gate.values()[slot],
                                                    "gate_r2": lambda: self.gate.r2()[slot]},
                                       read=self._read))
        if not math.isfinite(out["gate_r2"]):
            out["gate_r2"] = None
        out["warm_start_failed"] = slot in self._warm_start_failed
        return out

    # -- non-stalling reads (CUDA) ----------------------------------------------------------------
    def mark_step(self) -> None:
        """End of a decode step (explore_step calls it): on CUDA, record where the step's work and
        its training end, for _read. Nothing to do on CPU."""
        if self.device.type != "cuda":
            return
        if self._marks is None:
            self._marks = StepMarks(torch.cuda.Event)
        self._marks.mark(self.trainer._stream if self.trainer.mode == "cuda_stream" else None)

    def _read(self, build) -> list[float]:
        """Build a small device tensor (`build()`) and read it on the host in one copy. On CUDA the
        copy runs on a side stream that waits for the newest completed decode step and that step's
        training (StepMarks), not for what the engine queued after it; only that copy is awaited.
        The read may see some of the queued later steps' updates (each value whole). It waits on
        the step's own event, recorded on the stream the step ran on, not on the calling stream.
        If no recorded step has completed yet, it waits for the newest recorded one."""
        if self.device.type != "cuda":
            self.trainer.wait()  # cpu_thread: the train_* columns whole
            return build().tolist()
        main = torch.cuda.current_stream(self.device)
        pair = None
        if self._marks is not None:
            pair = self._marks.newest_done() or self._marks.newest()
        if self._read_stream is None:
            self._read_stream = torch.cuda.Stream(device=self.device)
        stream = self._read_stream
        with torch.cuda.stream(stream):
            if pair is None:  # no step recorded yet: everything so far
                stream.wait_stream(main)
                if self.trainer.mode == "cuda_stream":
                    stream.wait_stream(self.trainer._stream)
            else:
                StepMarks.order(stream, pair)
            row = build()
            host = torch.empty(row.shape, dtype=row.dtype, pin_memory=True)
            host.copy_(row, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        done.synchronize()
        return host.tolist()

    def close(self) -> None:
        self.trainer.close()
