"""RL rollouts on a real SGLang CPU server (SmolLM2-135M): one Distiller per prompt across `n = 1`
requests (`group_by = prompt`), exploring by default (`explore_all`), and online weight updates.

The session servers run the default config, so this module starts its own server with
`ESAMP_SGL_GROUP_BY=prompt ESAMP_SGL_GROUP_MAX_MEMBERS=8 ESAMP_SGL_EXPLORE_ALL=true`. Every test
uses prompts of its own (a uuid): a prompt group stays open for 30 s in the tokenizer process.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from esamp_sgl.launch.server import SGLangServer

pytestmark = pytest.mark.e2e

MAX_MEMBERS = 8
TOKENS = 12


def test_engine_generate_batch_of_repeated_prompts_shares_one_group_per_prompt(model_path):
    """First in the module, so the engine does not run beside this module's server."""
    env = {**os.environ, "ESAMP_SGL_GROUP_BY": "prompt", "ESAMP_SGL_TEST_MODEL": str(model_path)}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("rl_engine_rollout.py"))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    out = json.loads(next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    k = out["repeats"]
    first, second = out["groups"][:k], out["groups"][k:]
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0], out["groups"]
    assert first[0].startswith("prompt-") and second[0].startswith("prompt-")
    for part in (slice(0, k), slice(k, 2 * k)):
        predictions = out["predictions"][part]
        last = predictions.index(max(predictions))  # the member that left last saw every step
        assert out["members_joined"][part][last] == k
        generated = sum(out["completion_tokens"][part])
        assert generated <= predictions[last] <= generated + k  # one Distiller saw every member's rows


@pytest.fixture(scope="module")
def rl_server(model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "sglang-esamp-rl.log"
    env = {"ESAMP_SGL_GROUP_BY": "prompt", "ESAMP_SGL_GROUP_MAX_MEMBERS": str(MAX_MEMBERS),
           "ESAMP_SGL_EXPLORE_ALL": "true"}
    server = SGLangServer(model_path, sampling_backend="esamp", log_path=log, env={**os.environ, **env},
                          extra_args=["--random-seed", "1234"])
    with server:
        yield server


def generate(server, text: str, **params) -> dict:
    response = requests.post(server.url + "/generate", json={"text": text, "sampling_params": params}, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def rollout(server, prompts: list[str], **params) -> list[dict]:
    """One n=1 request per prompt, all at once (the way an RL trainer sends its repeated prompts)."""
    body = {"max_new_tokens": TOKENS, "ignore_eos": True, "temperature": 1.0, "min_p": 0.05, **params}
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(lambda p: generate(server, p, **body), prompts))


def reports(outs: list[dict]) -> list[dict]:
    return [o["meta_info"]["esamp"][0] for o in outs]


def check_one_distiller(outs: list[dict]) -> dict:
    telemetry = reports(outs)
    assert len({t["group"] for t in telemetry}) == 1, [t["group"] for t in telemetry]
    last = max(telemetry, key=lambda t: t["predictions"])  # the member that left last saw every step
    generated = sum(o["meta_info"]["completion_tokens"] for o in outs)
    assert last["members_joined"] == len(outs)
    assert generated <= last["predictions"] <= generated + len(outs)  # every member's rows, one Distiller
    assert last["steps_trained"] > 0 and last["status"] == "ok"
    return last


def test_eight_concurrent_requests_with_one_prompt_share_one_group(rl_server, chat_prompt):
    prompt = chat_prompt(f"Invent a name for a boat. ({uuid.uuid4().hex[:8]})")
    outs = rollout(rl_server, [prompt] * 8, custom_params={"esamp": True})
    last = check_one_distiller(outs)
    assert last["group"].startswith("prompt-")
    assert len({o["text"] for o in outs}) > 1


def test_two_prompts_make_two_groups(rl_server, chat_prompt):
    tag = uuid.uuid4().hex[:8]
    a, b = chat_prompt(f"Name a fruit. ({tag})"), chat_prompt(f"Name a tool. ({tag})")
    outs = rollout(rl_server, [a, b] * 4, custom_params={"esamp": True})
    first, second = outs[0::2], outs[1::2]
    check_one_distiller(first)
    check_one_distiller(second)
    assert reports(first)[0]["group"] != reports(second)[0]["group"]


def test_a_full_group_opens_a_new_one_and_esamp_group_wins(rl_server, chat_prompt):
    prompt = chat_prompt(f"Name a city. ({uuid.uuid4().hex[:8]})")
    outs = rollout(rl_server, [prompt] * (MAX_MEMBERS + 2), custom_params={"esamp": True})
    groups = [t["group"] for t in reports(outs)]
    sizes = sorted(groups.count(g) for g in set(groups))
    assert sizes == [2, MAX_MEMBERS], groups
    mine = f"mine-{uuid.uuid4().hex}"
    outs = rollout(rl_server, [prompt] * 2, custom_params={"esamp": True, "esamp_group": mine})
    assert {t["group"] for t in reports(outs)} == {mine}


def test_explore_all_explores_plain_requests_unless_they_opt_out(rl_server, chat_prompt):
    prompt = chat_prompt(f"Say something kind. ({uuid.uuid4().hex[:8]})")
    plain = generate(rl_server, prompt, max_new_tokens=4)
    assert plain["meta_info"]["esamp"][0]["group"].startswith("prompt-")
    off = generate(rl_server, prompt, max_new_tokens=4, custom_params={"esamp": False})
    assert not off["meta_info"].get("esamp")
    chat = requests.post(rl_server.url + "/v1/chat/completions", timeout=600, json={
        "model": "default", "messages": [{"role": "user", "content": "Name a bird."}], "max_tokens": 4})
    assert chat.status_code == 200, chat.text
    assert chat.json()["metadata"]["esamp"][0]["group"].startswith("prompt-")


def test_the_routing_key_header_names_the_group(rl_server, chat_prompt):
    """What SGLang's router forwards (it drops custom_params): X-SMG-Routing-Key groups different prompts."""
    key = f"user-{uuid.uuid4().hex[:8]}"
    body = {"max_new_tokens": TOKENS, "ignore_eos": True, "temperature": 1.0}

    def send(i: int) -> dict:
        response = requests.post(rl_server.url + "/generate", headers={"X-SMG-Routing-Key": key}, timeout=600,
                                 json={"text": chat_prompt(f"Name an animal, take {i}."), "sampling_params": body})
        assert response.status_code == 200, response.text
        return response.json()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(send, range(3)))
    assert {t["group"] for t in reports(outs)} == {key}
    assert max(t["members_joined"] for t in reports(outs)) == 3
    chat = requests.post(rl_server.url + "/v1/chat/completions", headers={"X-SMG-Routing-Key": key + "-chat"},
                         timeout=600, json={"model": "default", "max_tokens": 4,
                                            "messages": [{"role": "user", "content": "Name a tree."}]})
    assert chat.status_code == 200 and chat.json()["metadata"]["esamp"][0]["group"] == key + "-chat"


def scaled_model(model_path: Path, out: Path, factor: float) -> Path:
    """A copy of the model folder with the (tied) embedding / LM head scaled by `factor`."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for item in model_path.iterdir():
        if item.name != "model.safetensors":
            (out / item.name).symlink_to(item)
    tensors = load_file(model_path / "model.safetensors")
    names = [n for n in tensors if n.endswith("embed_tokens.weight") or n.endswith("lm_head.weight")]
    assert names
    for name in names:
        tensors[name] = tensors[name] * factor
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_d_follows_the_lm_head_after_update_weights_from_disk(rl_server, chat_prompt, model_path, tmp_path):
    def server_report() -> dict:
        prompt = chat_prompt(f"Name a colour. ({uuid.uuid4().hex[:8]})")
        t = generate(rl_server, prompt, max_new_tokens=6, temperature=1.0)["meta_info"]["esamp"][0]
        assert t["status"] == "ok" and t["predictions"] > 0
        return t["server"]

    def update(path: Path) -> None:
        response = requests.post(rl_server.url + "/update_weights_from_disk", json={"model_path": str(path)}, timeout=600)
        assert response.status_code == 200 and response.json()["success"], response.text

    before = server_report()
    assert before["weight_updates"] == 0
    update(scaled_model(Path(model_path), tmp_path / "scaled", 2.0))
    after = server_report()
    # bf16 x 2 is exact: the head `d` is computed from is exactly twice the old one
    assert after["weight_updates"] == 1
    assert after["lm_head_norm"] == pytest.approx(2 * before["lm_head_norm"], rel=1e-4)
    update(Path(model_path))  # back to the original weights
    restored = server_report()
    assert restored["weight_updates"] == 2
    assert restored["lm_head_norm"] == pytest.approx(before["lm_head_norm"], rel=1e-4)
    assert "esamp: weights updated" in rl_server.log_path.read_text()
