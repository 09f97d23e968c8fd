"""Prometheus metrics of the esamp backend, on SGLang's own `/metrics` (with `--enable-metrics`).

SGLang 0.5.23 runs prometheus_client in multiprocess mode: the launcher sets
`PROMETHEUS_MULTIPROC_DIR` before it spawns the schedulers (`set_prometheus_multiproc_dir`), every
process writes its samples to files there, and the HTTP server's `/metrics` merges them
(`MultiProcessCollector`). The esamp metrics are created in each scheduler process (on attention-TP
rank 0 only: TP ranks hold identical state) and labelled like SGLang's (`model_name`, plus `dp_rank`).

Updated off the hot path, from host-side state only (never a device read): the gauges when a request
joins or leaves a group, the counters when a group's last member leaves (from the final telemetry
that the leaving request reads anyway). So the counters cover finished groups.

| metric | type | what |
|---|---|---|
| `esamp_groups_active` | gauge | live fork groups (with a bank slot or, when the bank was full, sampled stock) |
| `esamp_slots_in_use` / `esamp_slots_capacity` | gauge | Distiller bank slots held / `max_groups` |
| `esamp_requests_active` | gauge | exploring requests (samples) in a group |
| `esamp_bank_full_refusals_total` | counter | groups refused a slot (sampled stock) |
| `esamp_groups_finished_total` | counter | groups with a bank slot whose last member left |
| `esamp_steps_trained_total` | counter | Distiller optimizer steps of finished groups |
| `esamp_tokens_reweighted_total` | counter | tokens sampled from reweighted candidates, finished groups |
| `esamp_nonfinite_predictions_total` | counter | rows sampled stock for a NaN/inf prediction, finished groups |
| `esamp_fit_r2_mean` | gauge | mean held-out fit R̄² (the fit gate's) at the end of the last 64 groups that measured one (NaN before) |
| `esamp_gate_mean` | gauge | mean fit gate g ∈ [0, 1] at the end of the last 64 finished groups (NaN before) |
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque

logger = logging.getLogger("esamp_sgl.metrics")

PREFIX = "esamp_"
RECENT_GROUPS = 64


class ESampMetrics:
    """The esamp_* metrics of one scheduler process."""

    def __init__(self, labels: dict[str, str]) -> None:
        # After PROMETHEUS_MULTIPROC_DIR is set (inherited from the launcher), like SGLang's collectors.
        from prometheus_client import Counter, Gauge

        names = list(labels)

        def gauge(name: str, doc: str):
            return Gauge(PREFIX + name, doc, names, multiprocess_mode="mostrecent").labels(**labels)

        def counter(name: str, doc: str):
            return Counter(PREFIX + name, doc, names).labels(**labels)

        self.groups_active = gauge("groups_active", "Live ESamp fork groups (with a bank slot or sampled stock).")
        self.slots_in_use = gauge("slots_in_use", "Distiller bank slots held by live groups.")
        self.slots_capacity = gauge("slots_capacity", "Distiller bank slots (max_groups).")
        self.requests_active = gauge("requests_active", "Exploring requests (samples) in a group.")
        self.fit_r2_mean = gauge("fit_r2_mean", f"Mean held-out fit R2 of the fit gate at the end of the last "
                                                f"{RECENT_GROUPS} finished groups that measured one.")
        self.gate_mean = gauge("gate_mean", f"Mean fit gate value at the end of the last {RECENT_GROUPS} "
                                            "finished groups.")
        self.bank_full_refusals = counter("bank_full_refusals", "Groups refused a bank slot (sampled stock).")
        self.warm_start_failures = counter("warm_start_failures",
                                           "Prefill warm starts that raised (the group decodes from init).")
        self.head_mix_failures = counter("head_mix_failures", "Decode forwards whose mix before the LM head "
                                                              "failed (the sampler mixed after it).")
        self.groups_finished = counter("groups_finished", "Groups with a bank slot whose last member left.")
        self.steps_trained = counter("steps_trained", "Distiller optimizer steps of finished groups.")
        self.tokens_reweighted = counter("tokens_reweighted",
                                         "Tokens sampled from reweighted candidates (finished groups).")
        self.nonfinite_predictions = counter("nonfinite_predictions",
                                             "Rows sampled stock for a non-finite prediction (finished groups).")
        self.fit_r2_mean.set(math.nan)  # NaN until a finished group has measured its fit
        self.gate_mean.set(math.nan)
        self._seen: dict[str, int] = {}  # the runtime's running counts already added to the counters
        self._recent_r2: deque[float] = deque(maxlen=RECENT_GROUPS)
        self._recent_gate: deque[float] = deque(maxlen=RECENT_GROUPS)

    def update(self, runtime) -> None:
        """Gauges from the runtime's host-side state (called on join and leave)."""
        groups = runtime.explorer.groups
        self.groups_active.set(len(groups) + groups.stock_groups)
        self.slots_in_use.set(groups.slots_in_use)
        self.slots_capacity.set(runtime.config.max_groups)
        self.requests_active.set(len(runtime.members))
        for name, count in (("bank_full_refusals", runtime.explorer.bank_full_count),
                            ("warm_start_failures", runtime.warm_start_failures),
                            ("head_mix_failures", runtime.head_mix_failures)):
            if count > self._seen.get(name, 0):  # the counters take the runtime's new counts only
                getattr(self, name).inc(count - self._seen.get(name, 0))
                self._seen[name] = count

    def group_finished(self, telemetry: dict) -> None:
        """The final telemetry of a group whose last member just left."""
        self.groups_finished.inc()
        for counter, key in ((self.steps_trained, "steps_trained"), (self.tokens_reweighted, "tokens_reweighted"),
                             (self.nonfinite_predictions, "nonfinite_predictions")):
            value = telemetry.get(key)
            if value:
                counter.inc(value)
        r2, gate = telemetry.get("gate_r2"), telemetry.get("gate")
        if isinstance(r2, (int, float)) and math.isfinite(r2):
            self._recent_r2.append(float(r2))
            self.fit_r2_mean.set(sum(self._recent_r2) / len(self._recent_r2))
        if isinstance(gate, (int, float)) and math.isfinite(gate):
            self._recent_gate.append(float(gate))
            self.gate_mean.set(sum(self._recent_gate) / len(self._recent_gate))


def scheduler_metrics(runtime) -> ESampMetrics | None:
    """The metrics of this scheduler process (already showing the idle state of `runtime`), or None
    without `--enable-metrics` (or on a TP rank other than 0, or where prometheus_client is missing)."""
    try:
        from sglang.srt.runtime_context import get_observability, get_parallel, get_serving

        if not get_observability().enable_metrics or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return None
        if (get_parallel().attn_tp_rank or 0) != 0:
            return None
        dp_rank = get_parallel().dp_rank
        labels = {"model_name": str(get_serving().served_model_name),
                  "dp_rank": str(dp_rank if dp_rank is not None else 0)}
        metrics = ESampMetrics(labels)
        metrics.update(runtime)
        return metrics
    except Exception:  # metrics must never stop the server from serving
        logger.exception("esamp: could not set up the Prometheus metrics; serving without them")
        return None
