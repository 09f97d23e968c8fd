"""The ESamp work split over TP ranks by group (runtime_patch/tensor_parallel.py RowOwnership), over a
real 2-rank gloo group: each rank predicts, draws and trains only its own groups, one token exchange
gives every rank the tokens a single process computes for all groups, and a leaving member's telemetry
is its owner's on every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from esamp_sgl.core.config import ESampConfig, ExploreRequest
from esamp_sgl.core.explorer import Explorer
from esamp_sgl.core.step import StepBatch, explore_batch
from esamp_sgl.launch.server import free_port
from runtime_patch.rows import BatchRows
from runtime_patch.runtime import SchedulerState
from runtime_patch.tensor_parallel import RowOwnership

H, V, TP, STEPS = 16, 120, 2, 5
RIDS = ("a0", "b0", "a1", "b1")  # groups a and b, interleaved in the batch
REQUESTS = tuple(ExploreRequest(group=rid[0], beta=3.0) for rid in RIDS)


def _runtime() -> SchedulerState:
    # Greedy rows explored (apply_to_greedy): the draw is an argmax, so tokens are comparable across
    # processes whatever each process's generator did.
    config = ESampConfig(profile="paper", max_groups=4, seed=7, train_mode="sync", apply_to_greedy=True,
                         greedy_min_p=0.01)
    weight = torch.randn(V, H, generator=torch.Generator().manual_seed(5))
    runtime = SchedulerState(config, Explorer(config, H, weight, device="cpu"), taps=None)
    for rid, request in zip(RIDS, REQUESTS):
        runtime.join(rid, request)
    return runtime


def _run(runtime: SchedulerState) -> dict:
    """STEPS decode steps of the four rows, then every member leaves: tokens, stock tokens, reports."""
    rows = BatchRows(RIDS, REQUESTS)
    data = torch.Generator().manual_seed(11)  # the same batches in every process
    tokens, stock = [], []
    for _ in range(STEPS):
        logits = torch.randn(len(RIDS), V, generator=data) * 3
        source, target = torch.randn(len(RIDS), H, generator=data), torch.randn(len(RIDS), H, generator=data)
        plan = runtime.step_plan(rows, torch.device("cpu"))
        batch = StepBatch(logits=logits, temperatures=torch.ones(4), top_k=torch.ones(4, dtype=torch.int64),
                          top_p=torch.ones(4), min_p=torch.zeros(4), is_greedy=torch.ones(4, dtype=torch.bool),
                          plan=plan, source=source, target=target)
        ids = explore_batch(runtime.explorer, batch, lambda: logits.argmax(-1))
        if runtime.ownership is not None:
            foreign = runtime.ownership.foreign_rows(runtime.row_slots(rows), torch.device("cpu"))
            ids = runtime.ownership.combine(ids, foreign)
        tokens.append(ids.tolist())
        stock.append(logits.argmax(-1).tolist())
    slots = {rid: runtime.members[rid].slot for rid in RIDS}
    reports = [runtime.leave(rid) for rid in RIDS]
    return {"tokens": tokens, "stock": stock, "slots": slots, "rows_planned": runtime.rows_planned,
            "reports": [{k: r[k] for k in ("group", "slot", "predictions", "tokens_reweighted", "mean_novelty",
                                                  "mean_loss", "tp_rank") if k in r}
                        for r in reports]}


def _on_rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TP)
    try:
        runtime = _runtime()
        runtime.ownership = RowOwnership(rank, TP, tuple(range(TP)), dist.group.WORLD, dist.group.WORLD)
        results[rank] = _run(runtime)
    finally:
        dist.destroy_process_group()


def test_each_rank_explores_its_own_groups_and_every_rank_gets_every_token():
    reference = _run(_runtime())  # one process, every group
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_on_rank, args=(free_port(), results), nprocs=TP, join=True)
        ranks = [results[r] for r in range(TP)]
    assert sorted(reference["slots"][r] % TP for r in ("a0", "b0")) == [0, 1]  # one group per rank
    assert reference["tokens"] != reference["stock"]  # the tilt moved some tokens: the exchange carries them
    for rank in ranks:
        assert rank["slots"] == reference["slots"]
        assert rank["tokens"] == reference["tokens"]  # the owners' tokens, on every rank
        # Each rank planned (predicted, drew, trained) only its own group's two rows per step.
        assert rank["rows_planned"] == STEPS * 2 and reference["rows_planned"] == STEPS * 4
    for got_on_0, got_on_1, want in zip(ranks[0]["reports"], ranks[1]["reports"], reference["reports"]):
        assert got_on_0 == got_on_1  # the owner's report, broadcast
        assert got_on_0["tp_rank"] == want["slot"] % TP
        assert got_on_0["predictions"] == want["predictions"] == STEPS * 2
        assert got_on_0["tokens_reweighted"] == want["tokens_reweighted"]
        for key in ("mean_novelty", "mean_loss"):  # the same fit and training as in one process
            assert abs(got_on_0[key] - want[key]) <= 1e-5 * max(1.0, abs(want[key])), key


def _foreign_on_rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=TP)
    try:
        own = RowOwnership(rank, TP, tuple(range(TP)), dist.group.WORLD, dist.group.WORLD)
        slots = [0, -1, 1, 3, -1]
        foreign = own.foreign_rows(slots, torch.device("cpu"))
        # Rank r's own view: its rows' ids are 10 * r + row; a stock row's id is the same on every rank.
        # The dtypes differ as in the engine (a rank that explored nothing holds SGLang's int32 ids).
        ids = torch.tensor([10 * rank + i if s >= 0 else 7 for i, s in enumerate(slots)],
                           dtype=torch.int64 if rank == 0 else torch.int32)
        results[rank] = (foreign.tolist(), own.combine(ids, foreign).tolist(),
                         own.foreign_rows([-1, -1], torch.device("cpu")))
    finally:
        dist.destroy_process_group()


def test_the_exchange_keeps_each_rows_owner_and_the_stock_rows():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_foreign_on_rank, args=(free_port(), results), nprocs=TP, join=True)
        (foreign0, ids0, none0), (foreign1, ids1, none1) = results[0], results[1]
    assert foreign0 == [False, False, True, True, False] and foreign1 == [True, False, False, False, False]
    assert ids0 == ids1 == [0, 7, 12, 13, 7]  # slot 0 from rank 0, slots 1 and 3 from rank 1
    assert none0 is None and none1 is None  # no exploring row: no exchange on any rank
