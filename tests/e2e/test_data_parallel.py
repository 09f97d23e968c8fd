"""Group-affine data parallelism on a real `--dp-size 2` SGLang server (CPU, SmolLM2-135M).

Without the routing hook SGLang's DP controller round-robins every one of the `n` samples of a
request on its own, so one group would train two private Distillers; the stock `n=4` request below
shows that SGLang behaviour on the same server.
"""

from __future__ import annotations

import concurrent.futures

import pytest
import requests

from parallel_server import parallel_server
from runtime_patch.dp_routing import dp_rank_for_group

pytestmark = pytest.mark.e2e

DP_SIZE = 2
N = 4
MAX_TOKENS = 8
# Fixed ids, chosen so that the hash puts groups on both ranks (asserted below).
NAMED_GROUPS = [f"dp-test-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def dp_server(model_path, tmp_path_factory):
    yield from parallel_server(model_path, tmp_path_factory, dp_size=DP_SIZE)


def generate(server, text: str, timeout: float = 600, **params) -> list[dict]:
    response = requests.post(server.url + "/generate", json={"text": text, "sampling_params": params},
                             timeout=timeout)
    assert response.status_code == 200, response.text
    out = response.json()
    return out if isinstance(out, list) else [out]


def explore_group(server, prompt: str, group: str | None) -> list[dict]:
    custom = {"esamp": True, "esamp_beta": 1.0, **({"esamp_group": group} if group else {})}
    return generate(server, prompt, n=N, max_new_tokens=MAX_TOKENS, temperature=1.0, min_p=0.05,
                    ignore_eos=True, custom_params=custom)


def test_every_member_of_a_group_runs_on_one_rank_and_trains_one_distiller(dp_server, chat_prompt):
    assert {dp_rank_for_group(g, DP_SIZE) for g in NAMED_GROUPS} == {0, 1}
    # 8 groups x n=4, all in flight at once: 4 named groups and 4 automatic ones (`req-<rid>`).
    jobs = [(chat_prompt(f"Name a colour and a fruit, variant {i}."), NAMED_GROUPS[i] if i < 4 else None)
            for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: explore_group(dp_server, *job), jobs))

    ranks_used = set()
    for (_, named), outs in zip(jobs, results):
        assert len(outs) == N
        telemetry = [o["meta_info"]["esamp"][0] for o in outs]
        group = telemetry[0]["group"]
        assert {t["group"] for t in telemetry} == {group} and (named is None or group == named)
        sglang_ranks = {o["meta_info"]["dp_rank"] for o in outs}  # SGLang's own report
        esamp_ranks = {t["server"]["dp_rank"] for t in telemetry}  # the rank whose Distiller served it
        assert sglang_ranks == esamp_ranks == {dp_rank_for_group(group, DP_SIZE)}, (group, sglang_ranks)
        ranks_used |= sglang_ranks
        assert all(t["status"] == "ok" and t["slot"] is not None for t in telemetry)
        # One Distiller trained on every member's rows: the member that left last has seen them all
        # (a group split over ranks would report about one member's tokens).
        last = max(telemetry, key=lambda t: t["predictions"])
        generated = sum(o["meta_info"]["completion_tokens"] for o in outs)
        assert generated == N * MAX_TOKENS
        assert generated <= last["predictions"] <= generated + N, (group, last)
        assert last["tokens_reweighted"] > 0 and last["steps_trained"] >= MAX_TOKENS
    assert ranks_used == {0, 1}


def test_separate_requests_sharing_a_group_share_a_rank(dp_server, chat_prompt):
    group = "dp-test-shared"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(
            lambda i: generate(dp_server, chat_prompt(f"Say hello, take {i}."), n=2, max_new_tokens=4,
                               custom_params={"esamp": True, "esamp_group": group}),
            range(3)))
    ranks = {o["meta_info"]["dp_rank"] for outs in results for o in outs}
    assert ranks == {dp_rank_for_group(group, DP_SIZE)}


def test_requests_without_esamp_keep_sglang_load_balancing(dp_server, chat_prompt):
    # Round robin (the default method): one request after the other alternates ranks...
    ranks = [generate(dp_server, chat_prompt("Hi"), max_new_tokens=2)[0]["meta_info"]["dp_rank"]
             for _ in range(4)]
    assert set(ranks) == {0, 1}
    # ...and a stock n=4 request is split over both ranks: what an exploring group must not be.
    outs = generate(dp_server, chat_prompt("Hi"), n=N, max_new_tokens=2)
    assert {o["meta_info"]["dp_rank"] for o in outs} == {0, 1}
