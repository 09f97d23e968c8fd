"""ESamp state of one scheduler process: the Explorer, the taps, and which request is in which group.

Group membership is keyed by request id (never by KV-pool index, which retraction changes). A
request joins when its first extend batch is built and leaves when it finishes or is aborted; the
group's bank slot is freed when its last member leaves. A group that finds the bank full is sampled
stock for its whole life, reported as `status: "bank_full"`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.plan import StepPlan, plan_step
from esamp_sgl.core.prompt_pairs import PromptPairs
from runtime_patch.rows import BatchRows
from runtime_patch.taps import Taps
from runtime_patch.tensor_parallel import RowOwnership

logger = logging.getLogger("esamp_sgl.runtime")

# A fit on one position has no variance to explain: such a group is not warm-started (gate shut).
MIN_WARM_START_POSITIONS = 2


def lm_head_norm(weight: torch.Tensor, rows: int = 8192) -> float:
    """Frobenius norm of the LM head in fp32, a block of rows at a time (no full-size fp32 copy)."""
    total = 0.0
    for start in range(0, weight.shape[0], rows):
        total += float(weight[start:start + rows].float().square().sum())
    return total ** 0.5


@dataclass
class Member:
    group: str
    slot: int | None  # None: the bank was full when the group arrived -> stock sampling


class SchedulerState:
    def __init__(self, config: ESampConfig, explorer: Explorer, taps: Taps) -> None:
        self.config = config
        self.explorer = explorer
        self.taps = taps
        self.members: dict[str, Member] = {}  # rid -> membership
        self.prompt_pairs = PromptPairs(config.warm_start_prompts, config.warm_start_max_positions)
        self.steps = 0
        # Decode steps whose latent rows were mixed before the LM head (head_mix.py); the others mix
        # after it (the first token, CUDA-graph replays).
        self.head_mix_steps = 0
        self.head_mix_failures = 0  # forwards left stock because the mix before the head raised
        # Decode steps whose ĥ was computed on the CPU's worker beside layers 2…L (beside.py).
        self.predictions_beside = 0
        # Prefill warm starts that raised (e.g. out of memory): those groups start from init, gate shut
        # (count_warm_start_failure; reported in summary()).
        self.warm_start_failures = 0
        self.dp_rank: int | None = None  # SGLang's DP rank of this scheduler (None: no --dp-size > 1)
        # Online weight updates seen (runtime_patch/weight_sync.py) and a fingerprint of the LM head
        # that `d` is computed from, so a client can see that the backend follows the new weights.
        self.weight_updates = 0
        self.lm_head_norm = lm_head_norm(explorer.lm_head_weight)
        # runtime_patch.metrics.ESampMetrics with --enable-metrics (set in hooks.bind_model), else None.
        self.metrics = None
        # Under --tp-size > 1: which rank computes which group (tensor_parallel.py; set in bind_model).
        self.ownership: RowOwnership | None = None
        self.rows_planned = 0  # rows this process planned ESamp work for (under TP: its own groups')

    # -- lifecycle ----------------------------------------------------------------------------------
    @staticmethod
    def group_key(rid: str, request: ExploreRequest) -> str:
        # The tokenizer-side hook stamps `esamp_group` (n>1 siblings share it); this is the fallback.
        return request.group if request.group is not None else f"rid:{rid}"

    def join(self, rid: str, request: ExploreRequest) -> None:
        if rid in self.members:  # e.g. a retracted request prefilled again
            return
        group = self.group_key(rid, request)
        slot = self.explorer.join_group(group)
        if slot is None and self.explorer.groups.stock_members(group) == 1:
            logger.warning("esamp: bank full (%d groups); group %r is sampled stock", self.config.max_groups, group)
        self.members[rid] = Member(group, slot)
        if self.metrics is not None:
            self.metrics.update(self)

    def leave(self, rid: str) -> dict | None:
        """Remove a finished/aborted request; return its final telemetry (None if not a member)."""
        member = self.members.pop(rid, None)
        if member is None:
            return None
        telemetry = self.member_report(member)
        # A slot comes back when the last member of a slotted group left (never for a stock group).
        last = self.explorer.leave_group(member.group) is not None
        if last and self.metrics is not None:
            self.metrics.group_finished(telemetry)  # the group's final counters
        if last and telemetry["status"] != "ok":
            # Once per group; the counters say how often it happened.
            logger.warning("esamp: group %r had non-finite Distiller output (%d predictions sampled stock, "
                           "%d resets)", member.group, telemetry.get("nonfinite_predictions", 0),
                           telemetry.get("nonfinite_resets", 0))
        telemetry["server"] = self.summary()  # after leaving: lets a client see that nothing leaked
        if self.metrics is not None:
            self.metrics.update(self)
        return telemetry

    def member_report(self, member: Member) -> dict:
        if member.slot is None:
            return {"group": member.group, "status": "bank_full"}
        if self.ownership is not None:  # the group's counters are its owner's
            return self.ownership.report_from_owner(member.slot, lambda: self._group_report(member.group))
        return self._group_report(member.group)

    def _group_report(self, group: str) -> dict:
        out = self.explorer.report(group)
        if self.ownership is not None:
            out["tp_rank"] = self.ownership.rank
        # nonfinite_prediction: some of the group's rows were sampled stock because the Distiller's
        # prediction was NaN/inf; nonfinite_reset: a non-finite loss reset the Distiller.
        out["status"] = ("nonfinite_prediction" if out.get("nonfinite_predictions")
                         else "nonfinite_reset" if out.get("nonfinite_resets") else "ok")
        return out

    # -- online weight updates ---------------------------------------------------------------------
    def on_weights_updated(self, lm_head_weight: torch.Tensor) -> int:
        """The engine loaded new weights: compute `d` from the new LM head, and restart every live
        group (a Distiller fitted to the old network must not steer or keep training across the
        change; the captured prompt pairs are the old network's too). Returns the groups reset."""
        self.explorer.rebind_lm_head(lm_head_weight)
        reset = self.explorer.reset_live_groups()
        self.prompt_pairs.clear()
        self.weight_updates += 1
        self.lm_head_norm = lm_head_norm(self.explorer.lm_head_weight)
        return reset

    # -- prefill warm start -------------------------------------------------------------------------
    def wants_prompt_positions(self, rows: BatchRows | None) -> bool:
        return (self.config.prefill_warm_start and rows is not None and rows.spans is not None
                and any(span is not None for span in rows.spans))

    def warm_start_from_extend(self, rows: BatchRows, extend_lens: list[int], positions) -> None:
        """An extend forward computed `extend_lens[i]` positions of row i; `positions(offset, n)`
        gives their taps [n, width]. Keep the prompt pairs of ESamp requests, then warm-start each
        group whose member samples its first token in this forward (once per group)."""
        offset = 0
        for span, count in zip(rows.spans, extend_lens):
            if span is not None and count > 0:
                source, target = self.taps.split(positions(offset, count))
                self.prompt_pairs.add(span.prompt_key, span.prompt_len, span.start, source, target)
            offset += count
        for rid, span in zip(rows.rids, rows.spans):
            member = self.members.get(rid)
            if span is None or not span.completes_prompt or member is None or not self.computes(member):
                continue
            if not self.explorer.needs_warm_start(member.group):
                continue
            pairs = self.prompt_pairs.pairs(span.prompt_key)
            if pairs is not None and pairs[0].shape[0] >= MIN_WARM_START_POSITIONS:
                try:
                    self.explorer.warm_start_group(member.group, *pairs)
                except Exception as exc:  # one group's failure must not cost the others theirs
                    self.count_warm_start_failure(exc, member.group)

    def count_warm_start_failure(self, exc: BaseException, group: str | None = None) -> None:
        """Count a prefill warm start that raised (summary: `warm_start_failures`; the group's
        telemetry: `warm_start_failed`) and log it once with its reason (the traceback the first
        time only: a recurring cause, e.g. out of memory, would flood the log). The group decodes
        from init without a warm start (Explorer.warm_start_group says how)."""
        self.warm_start_failures += 1
        reason = f"{type(exc).__name__}: {exc}"
        where = "" if group is None else f" for group {group!r}"
        logger.warning("esamp: prefill warm start failed%s (%d so far): %s; the group decodes from init "
                       "without a warm start (gate shut until measured)", where, self.warm_start_failures,
                       reason, exc_info=exc if self.warm_start_failures == 1 else None)

    def count_head_mix_failure(self, exc: BaseException) -> None:
        """Count a forward whose mix before the LM head raised or failed its checks (summary:
        `head_mix_failures`); the first and every 1000th are logged with the reason."""
        self.head_mix_failures += 1
        if self.head_mix_failures == 1 or self.head_mix_failures % 1000 == 0:
            logger.warning("esamp: latent mixing before the LM head failed (%d so far): %s: %s; this forward "
                           "is stock, the sampler mixes after the head", self.head_mix_failures,
                           type(exc).__name__, exc, exc_info=exc if self.head_mix_failures == 1 else None)

    # -- per step -----------------------------------------------------------------------------------
    def computes(self, member: Member) -> bool:
        """This process runs the member's group's ESamp work (it has a slot, and under TP this rank
        owns it)."""
        return member.slot is not None and (self.ownership is None or self.ownership.owns(member.slot))

    def row_slots(self, rows: BatchRows) -> list[int]:
        """Each row's bank slot, -1 for a row that does not explore (the same on every TP rank)."""
        slots = []
        for rid, request in zip(rows.rids, rows.requests):
            member = self.members.get(rid) if request is not None else None
            slots.append(-1 if member is None or member.slot is None else member.slot)
        return slots

    def step_plan(self, rows: BatchRows, device: torch.device) -> StepPlan:
        """The step's plan (esamp_sgl/core/plan.py) from each row's membership and ESamp options;
        under TP, rows of groups another rank owns are stock rows here."""
        slots, betas, train, rules = [], [], [], []
        for rid, request in zip(rows.rids, rows.requests):
            member = self.members.get(rid) if request is not None else None
            if member is None or not self.computes(member):
                slots.append(-1)
                betas.append(0.0)
                train.append(False)
                rules.append(self.config.rule)
                continue
            beta, rule, trains = self.explorer.row_options(request)
            slots.append(member.slot)
            betas.append(beta)
            train.append(trains)
            rules.append(rule)
        self.rows_planned += sum(s >= 0 for s in slots)
        return plan_step(slots, betas, train, rules, device)

    def slots_in_use(self) -> int:
        return self.explorer.groups.slots_in_use

    def summary(self) -> dict:
        return {
            "groups": len(self.explorer.groups),
            "slots_in_use": self.slots_in_use(),
            "capacity": self.config.max_groups,
            "members": len(self.members),
            "stock_groups": self.explorer.groups.stock_groups,
            "bank_full_refusals": self.explorer.bank_full_count,
            "steps": self.steps,
            "train_mode": self.explorer.train_mode,  # resolved: sync, cpu_thread or cuda_stream
            "head_mix_steps": self.head_mix_steps,
            "head_mix_failures": self.head_mix_failures,
            "predictions_beside": self.predictions_beside,
            "warm_start_failures": self.warm_start_failures,
            "dp_rank": self.dp_rank,
            "tp_rank": None if self.ownership is None else self.ownership.rank,
            "rows_planned": self.rows_planned,
            "weight_updates": self.weight_updates,
            "lm_head_norm": self.lm_head_norm,
        }
