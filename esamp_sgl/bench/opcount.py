"""Ops and bytes per ESamp step, counted with a TorchDispatchMode (deterministic, not timed).

* ops: aten ops that run a kernel (views excluded; counted separately), i.e. launches on a GPU.
  A foreach/fused multi-tensor op counts once (one multi_tensor_apply launch on CUDA).
* bytes written: for a functional op, the size of its outputs; for an op that writes its
  arguments (in place / out=), the size of what it writes: the whole argument, except for the
  index writes (index_copy_/index_fill_/index_add_/index_put_/scatter*), which count the rows they
  write. `_fused_adam(w)_` counts its parameters, moments and steps (not the gradients it reads).
* bytes read: what each op reads from memory, counted the same way: every tensor argument whole,
  except the gathers (index_select, gather, embedding, index), which read the rows they return, and
  the pure writes (copy_, fill_, zero_, index_copy_/index_fill_), which do not read their
  destination. No cache: an upper bound for what one kernel reads, exact for a weight streamed
  once (e.g. the LM head read by a GEMM).
* host reads: ops that read the device on the host (a sync under CUDA): .item()/bool()/float()
  (`_local_scalar_dense`), nonzero, unique, masked_select, bincount, equal. `.tolist()` and
  `.numpy()` of CPU tensors do not dispatch and are not seen, so on CPU this is a lower bound.

    python -m esamp_sgl.bench.opcount [--rows 256] [--group-size 8] [--hidden 576] [--vocab 49152]

Runs against whatever `esamp_sgl` is importable (also the code before the host plan existed,
for before/after numbers: PYTHONPATH=<old checkout> python path/to/opcount.py).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esamp_sgl.core.config import ESampConfig

try:  # the host-side plan; absent in the code before it (the "before" count)
    from esamp_sgl.core.layout import slot_layout
except ImportError:  # pragma: no cover - only for counting an older checkout
    slot_layout = None

SYNCING = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive",
           "masked_select", "bincount", "equal", "is_nonzero"}
INDEX_WRITES = {"index_copy_", "index_fill_", "index_add_", "index_put_", "_index_put_impl_",
                "scatter_", "scatter_add_", "scatter_reduce_"}
FUSED_OPTIM = {"_fused_adam_", "_fused_adamw_", "_fused_sgd_"}
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}  # no kernel
GATHERS = {"index_select", "gather", "embedding", "index", "take"}  # read what they return (+ the index)
PURE_WRITES = {"copy_", "fill_", "zero_", "index_copy_", "index_fill_", "masked_fill_"}  # destination unread


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.views = 0
        self.bytes_written = 0
        self.bytes_read = 0
        self.host_reads = 0
        self.by_op: Counter[str] = Counter()
        self.bytes_by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        schema = func._schema
        name = func.overloadpacket.__name__
        if name in SYNCING:
            self.host_reads += 1
        written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        if not written and any(r.alias_info is not None for r in schema.returns):
            self.views += 1  # a view: no kernel, no bytes
            return out
        if name in ALLOCATIONS:  # memory only: what writes it is counted where it happens
            return out
        self.ops += 1
        self.by_op[name] += 1
        values = dict(zip((a.name for a in schema.arguments), args))
        values.update(kwargs)
        if not written:
            n = sum(_nbytes(t) for t in _tensors(out))
        elif name in INDEX_WRITES:
            n = self._index_write_bytes(name, values)
        else:
            skip = {"grads"} if name in FUSED_OPTIM else set()
            n = sum(_nbytes(t) for a in written if a.name not in skip
                    for t in _tensors(values.get(a.name)))
        self.bytes_written += n
        self.bytes_by_op[name] += n
        self.bytes_read += self._read_bytes(name, schema, values, out, written)
        return out

    @staticmethod
    def _read_bytes(name: str, schema, values: dict, out, written) -> int:
        destinations = {a.name for a in written} if name in PURE_WRITES else set()
        inputs = [t for a in schema.arguments if a.name not in destinations
                  for t in _tensors(values.get(a.name))]
        if name in GATHERS:  # the rows returned, and the index itself
            index = [t for t in inputs if not t.is_floating_point()]
            return sum(_nbytes(t) for t in _tensors(out)) + sum(_nbytes(t) for t in index)
        return sum(_nbytes(t) for t in inputs)

    @staticmethod
    def _index_write_bytes(name: str, v: dict) -> int:
        self_t = v["self"]
        if name in ("index_copy_", "index_add_"):
            return _nbytes(v["source"])
        if name == "index_fill_":
            dim = v["dim"] % max(self_t.dim(), 1)
            row = self_t.numel() // max(self_t.shape[dim], 1) if self_t.dim() else 1
            return v["index"].numel() * row * self_t.element_size()
        if name in ("index_put_", "_index_put_impl_"):
            idx = [i for i in v["indices"] if i is not None]
            n = math.prod(torch.broadcast_shapes(*(i.shape for i in idx))) if idx else 1
            return n * math.prod(self_t.shape[len(v["indices"]):]) * self_t.element_size()
        src = v.get("src")
        return (_nbytes(src) if isinstance(src, torch.Tensor)
                else v["index"].numel() * self_t.element_size())

    def report(self, top: int = 8) -> dict:
        return {"ops": self.ops, "views": self.views, "bytes_written": self.bytes_written,
                "bytes_read": self.bytes_read, "host_reads": self.host_reads,
                "top_ops": dict(self.by_op.most_common(top)),
                "top_bytes": dict(self.bytes_by_op.most_common(top))}


def count(fn: Callable[[], object]) -> dict:
    with OpCounter() as c:
        fn()
    return c.report()


def unfiltered(cfg: ESampConfig) -> bool:
    """The profile's workload: T 1 without truncation when it mixes in latent space (the paper's setting)."""
    return cfg.latent_mixing


def bench_config(profile: str, hidden: int, device: str | torch.device = "cpu", **kw) -> ESampConfig:
    """The profile at this shape: a low-rank rank is capped at the hidden size. On CPU training runs
    inline: the counter sees only the calling thread's ops, and a timed step includes its training."""
    if torch.device(device).type == "cpu":
        kw.setdefault("train_mode", "sync")
    cfg = ESampConfig(profile=profile, **kw)
    return cfg.model_copy(update={"rank": min(cfg.rank, hidden)}) if cfg.distiller == "lowrank" else cfg


def _setup(rows: int, group_size: int, hidden: int, vocab: int, path: str, rank: int,
           device: torch.device, seed: int = 0, profile: str = "bounded", train_every: int = 1):
    from esamp_sgl.core.explorer import Explorer
    from esamp_sgl.core.plan import StepPlan
    from esamp_sgl.core.step import StepBatch

    gen = torch.Generator().manual_seed(seed)
    if device.type == "cuda":  # 152k x 3584: draw it where it lives
        dgen = torch.Generator(device=device).manual_seed(seed)
        w = (torch.randn(vocab, hidden, generator=dgen, device=device) * 0.02).to(torch.bfloat16)
    else:
        w = (torch.randn(vocab, hidden, generator=gen) * 0.02).to(torch.bfloat16)
    groups = -(-rows // group_size)
    cfg = bench_config(profile, hidden, device, max_groups=groups, fit_gate=False,  # the groups in use
                       train_every=train_every)
    if cfg.distiller == "lowrank":
        cfg = cfg.model_copy(update={"rank": min(rank, hidden)})
    plain = unfiltered(cfg)  # the paper's sampling (T 1, no truncation): the latent path
    ex = Explorer(cfg, hidden, w.to(device), device=device)
    if path == "static":  # the CUDA code path, run on this device
        ex.host_reads.free = False
        if hasattr(ex, "d_machine"):
            ex.d_machine = "cuda"  # d by the GPU's cost model (gather or GEMM)
    slot_list = [ex.join_group(f"g{i // group_size}") for i in range(rows)]
    slots = torch.tensor(slot_list, device=device)
    logits = torch.randn(rows, vocab, generator=gen) * 2.0
    peaks = torch.randint(0, vocab, (rows, 20), generator=gen)
    logits.scatter_add_(1, peaks, torch.rand(rows, 20, generator=gen) * 8 + 4)
    temp = 1.0 if plain else 0.8
    scaled = (logits / temp).to(device)
    kw = {}
    if slot_layout is not None and path == "static":
        kw["layout"] = slot_layout(slot_list, None, device)  # what the engine's plan() hands over
    batch = StepBatch(
        logits=scaled, temperatures=torch.full((rows,), temp, device=device),
        top_k=torch.full((rows,), 1 << 30, device=device),
        top_p=torch.full((rows,), 1.0 if plain else 0.95, device=device),
        min_p=torch.full((rows,), 0.0 if plain else 0.05, device=device),
        is_greedy=torch.zeros(rows, dtype=torch.bool, device=device),
        plan=StepPlan(slots=slots, betas=torch.full((rows,), 1.0, device=device), any_active=True,
                      rules=cfg.rule, **kw),
        source=torch.randn(rows, hidden, generator=gen).to(device, torch.bfloat16),
        target=torch.randn(rows, hidden, generator=gen).to(device, torch.bfloat16),
        probs=torch.softmax(scaled, dim=-1), unfiltered=plain)
    return ex, batch, slot_list


def server_step(ex, batch, stock_sample: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One decode step as the server runs it: a latent-mixing profile mixes before the LM head inside
    the engine's forward (step.mix_before_head; the LM-head pass itself is stock's cost), and the
    sampler keeps the engine's draw for the mixed rows; the others run explore_batch alone."""
    from dataclasses import replace

    from esamp_sgl.core.step import explore_batch, mix_before_head

    if ex.config.latent_mixing:
        head = mix_before_head(ex, replace(batch, logits=None, probs=None))
        if head is not None:
            batch = replace(batch, h_hat=head.h_hat, premixed=head.mixed)
    return explore_batch(ex, batch, stock_sample)


def step_counts(rows: int = 256, group_size: int = 8, hidden: int = 576, vocab: int = 49152,
                path: str = "cpu", rank: int = 64, device: str | torch.device = "cpu",
                profile: str = "bounded", train_every: int = 1) -> dict:
    """Counts for one whole ESamp step as the server runs it (server_step minus the stock draw, which
    is stock's cost) and for its training step alone, after two warm-up steps. With a training
    cadence k, `step` is the mean over k consecutive steps (one of them trains): amortized."""
    device = torch.device(device)
    ex, batch, slot_list = _setup(rows, group_size, hidden, vocab, path, rank, device, profile=profile,
                                  train_every=train_every)
    stock_tokens = batch.probs.argmax(-1)
    for _ in range(2):
        server_step(ex, batch, lambda: stock_tokens)
    ex.trainer.wait()
    step = _per_step(count(lambda: ([server_step(ex, batch, lambda: stock_tokens) for _ in range(train_every)],
                                    ex.trainer.wait())), train_every)
    train_kw = {}
    layout = getattr(batch, "layout", None)
    if layout is not None:
        train_kw["layout"] = layout.train
    has_slot = batch.slots >= 0
    ex.trainer.train_every = 1  # the training step alone, on one step's rows
    train = count(lambda: (ex.trainer.schedule(batch.source, batch.target, batch.slots, has_slot,
                                               **train_kw), ex.trainer.wait()))
    phases = _phase_counts(ex, batch) if path == "static" and not ex.config.latent_mixing else None
    ex.close()
    out = {"profile": profile, "rows": rows, "groups": len(set(slot_list)), "hidden": hidden, "vocab": vocab,
           "rank": ex.config.rank, "path": path, "device": str(device), "train_every": train_every,
           "step": step, "train": train}
    if phases is not None:
        out["phases"] = phases
    return out


def _per_step(report: dict, steps: int) -> dict:
    """A count over `steps` steps as the mean per step (ops may then be fractional)."""
    if steps == 1:
        return report
    mean = {k: report[k] / steps for k in ("ops", "views", "bytes_written", "bytes_read", "host_reads")}
    return {**report, **mean, "top_ops": {k: v / steps for k, v in report["top_ops"].items()},
            "top_bytes": {k: v / steps for k, v in report["top_bytes"].items()}}


def _phase_counts(ex, batch) -> dict:
    """The static path's step split into its phases (the calls of step.explore_step)."""
    from esamp_sgl.core import step as st
    from esamp_sgl.core.reweight import draw_tokens

    ex.trainer.wait()
    out: dict = {}
    res: dict = {}
    f = st.row_filters(batch, ex.config.greedy_min_p)
    layout = getattr(batch, "layout", None)
    kw = {"layout": layout} if layout is not None else {}
    out["predict"] = count(lambda: res.update(h=ex.bank(batch.source, batch.slots, **kw)))
    out["candidates"] = count(lambda: res.update(c=st.filtered_candidates(ex, batch, f)))
    out["reweight_total"] = count(lambda: res.update(rw=st.tilted_candidates(ex, batch, st.predict(ex, batch))))  # predict..rule
    rw = res["rw"]
    out["sample"] = count(lambda: res.update(t=draw_tokens(rw.scores, rw.cand.ids, batch.is_greedy,
                                                           ex.generator, ex.backend)))
    has = batch.slots >= 0

    def records():
        st.record_fit(ex, batch.slots, has, rw.h_hat, batch.target)
        st.record_draw(ex, batch, has, res["t"], st.Explored(res["t"], rw.applied, rw.applied, rw))
    out["telemetry_and_gate"] = count(records)
    keep = ("ops", "bytes_written", "bytes_read", "host_reads")
    return {k: {m: v[m] for m in keep} for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--paths", nargs="+", default=["cpu", "static"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    out = [step_counts(args.rows, args.group_size, args.hidden, args.vocab, path, device=args.device)
           for path in args.paths]
    print(json.dumps(out, indent=1))



def warm_start_counts(positions: int = 512, hidden: int = 576, rank: int = 64, steps: int | None = None,
                      path: str = "static", device: str | torch.device = "cpu",
                      profile: str = "bounded", seed: int = 0) -> dict:
    """Counts (ops, bytes_written, host_reads) for one group's prefill warm start on `positions`
    prompt pairs: the training steps, the fit that seeds the gate and its telemetry
    (Explorer.warm_start_group). `path` 'static' runs the CUDA code path on this device; `steps`
    defaults to the profile's warm_start_steps. The LM head is not read, so it is a stand-in."""
    from esamp_sgl.core.explorer import Explorer

    device = torch.device(device)
    kw: dict = {"max_groups": 1, "prefill_warm_start": True}
    if steps is not None:
        kw["warm_start_steps"] = steps
    cfg = bench_config(profile, hidden, device, **kw)
    if cfg.distiller == "lowrank":
        cfg = cfg.model_copy(update={"rank": min(rank, hidden)})
    gen = torch.Generator().manual_seed(seed)
    ex = Explorer(cfg, hidden, torch.zeros(8, hidden, device=device), device=device)
    if path == "static":  # as _setup: no host reads inside the step, no host-read grouping
        ex.host_reads.free = False
    ex.join_group("g")
    source = torch.randn(positions, hidden, generator=gen).to(device, torch.bfloat16)
    target = torch.randn(positions, hidden, generator=gen).to(device, torch.bfloat16)
    ran: list[bool] = []
    counts = count(lambda: (ran.append(ex.warm_start_group("g", source, target)), ex.trainer.wait()))
    ex.close()
    if ran != [True]:
        raise RuntimeError(f"profile {profile!r}: the warm start did not run")
    return {"profile": profile, "positions": positions, "hidden": hidden, "rank": cfg.rank,
            "steps": cfg.warm_start_steps, "path": path, "device": str(device),
            **{k: counts[k] for k in ("ops", "bytes_written", "bytes_read", "host_reads")}}


if __name__ == "__main__":
    main()
