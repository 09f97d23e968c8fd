"""Bank exhaustion and shutdown mid-generation, on a real esamp server with only 2 bank slots.

One server for the module (a start costs ~30-60 s on 2 cores); the shutdown test runs last and
stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter

import psutil
import pytest
import requests

from esamp_sgl.bench.soak_checks import probe_summary, scheduler_pids
from esamp_sgl.launch.server import SGLangServer, server_env

pytestmark = pytest.mark.e2e

MAX_GROUPS = 2
SHUTDOWN_BOUND_S = 30.0


@pytest.fixture(scope="module")
def small_bank_server(model_path, tmp_path_factory):
    env = {**server_env(), "ESAMP_SGL_MAX_GROUPS": str(MAX_GROUPS)}
    log = tmp_path_factory.mktemp("small-bank") / "sglang-esamp.log"
    server = SGLangServer(model_path, sampling_backend="esamp", env=env, log_path=log)
    server.start()
    yield server
    server.stop()


def test_groups_beyond_capacity_are_sampled_stock_and_report_bank_full(small_bank_server, chat_prompt):
    """One client, one batch call, 5 prompts -> 5 groups (each prompt gets its own) on a 2-slot bank:
    the documented policy is that 2 explore and 3 are sampled stock with status bank_full; nobody
    gets an error and no live group is evicted."""
    prompts = [chat_prompt(q) for q in ("Name a fruit.", "Name a tree.", "Name a bird.", "Name a fish.",
                                        "Name a city.")]
    body = {"text": prompts, "sampling_params": {"max_new_tokens": 12, "ignore_eos": True, "temperature": 1.0,
                                                 "custom_params": {"esamp": True}}}
    response = requests.post(small_bank_server.url + "/generate", json=body, timeout=300)
    assert response.status_code == 200, response.text
    outs = response.json()
    assert len(outs) == 5 and all(o["meta_info"]["completion_tokens"] == 12 for o in outs)
    reports = [o["meta_info"]["esamp"][0] for o in outs]
    assert len({r["group"] for r in reports}) == 5
    statuses = Counter(r["status"] for r in reports)
    # All 5 are admitted in one prefill batch, so exactly MAX_GROUPS got a slot.
    assert statuses == {"ok": MAX_GROUPS, "bank_full": 5 - MAX_GROUPS}, statuses
    assert all(r["tokens_reweighted"] > 0 for r in reports if r["status"] == "ok")
    assert max(r["server"]["bank_full_refusals"] for r in reports) >= 5 - MAX_GROUPS
    assert max(r["server"]["capacity"] for r in reports) == MAX_GROUPS

    summary = probe_summary(small_bank_server.url)  # a new group gets a slot again: nothing leaked
    assert (summary["slots_in_use"], summary["members"], summary["stock_groups"]) == (0, 0, 0)
    log = small_bank_server.log_path.read_text()
    assert log.count("esamp: bank full") == 5 - MAX_GROUPS  # one warning per refused group
    assert "Traceback" not in log


def test_sigterm_mid_generation_exits_within_the_bound(small_bank_server, chat_prompt):
    """Stop the server (SIGTERM to its process group, as SGLangServer.stop does) while exploring and
    bank_full requests are decoding: every process exits within the bound without SIGKILL, and the
    clients get an answer or a connection error instead of hanging."""
    url = small_bank_server.url
    schedulers = scheduler_pids(small_bank_server.process.pid)
    assert schedulers
    outcomes: list[str] = []

    def long_request(i: int) -> None:
        body = {"text": chat_prompt("Tell a long story."), "sampling_params": {
            "max_new_tokens": 4000, "ignore_eos": True, "temperature": 1.0,
            "custom_params": {"esamp": True, "esamp_group": f"shutdown-{i}-{uuid.uuid4().hex}"}}}
        try:
            outcomes.append(str(requests.post(url + "/generate", json=body, timeout=120).status_code))
        except requests.RequestException as exc:
            outcomes.append(type(exc).__name__)

    def prefills() -> int:
        return small_bank_server.log_path.read_text().count("Prefill batch")

    before = prefills()
    clients = [threading.Thread(target=long_request, args=(i,)) for i in range(MAX_GROUPS + 2)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 120
    while prefills() == before and time.monotonic() < deadline:  # scheduled: they decode from now on
        time.sleep(0.5)
    time.sleep(3.0)  # inside decoding (4000 tokens each: they cannot finish before the signal)

    process = small_bank_server.process
    started = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(SHUTDOWN_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running {SHUTDOWN_BOUND_S:.0f} s after SIGTERM:\n{small_bank_server.log_tail()}")
    exited_s = time.monotonic() - started
    for client in clients:
        client.join(SHUTDOWN_BOUND_S)
    assert not any(client.is_alive() for client in clients), "a client hung after the server stopped"
    assert len(outcomes) == len(clients) and "200" not in outcomes  # they were stopped mid-generation
    for pid in schedulers:  # no orphaned scheduler keeps the model (and the port's work) alive
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    print(f"server exited {exited_s:.1f} s after SIGTERM; clients: {outcomes}")
