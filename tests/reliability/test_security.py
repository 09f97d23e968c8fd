"""Security properties of the esamp backend.

* It never needs `--enable-custom-logit-processor` (SGLang's option that runs pickled client code).
* Nothing from a request is evaluated, unpickled, imported or used as a path: checked on the source
  of every module the server process loads from this project (an AST scan, so a future `eval` or
  `pickle.loads` in the plugin fails this test), and end to end with hostile group ids.
* A request's telemetry is its own group's: no other group's id or counters appear in a response.
"""

from __future__ import annotations

import ast
import json
import threading
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
# Modules the SGLang server process imports from this project (the plugin and the engine-agnostic core).
SERVER_SIDE = sorted([*ROOT.glob("runtime_patch/*.py"), *ROOT.glob("esamp_sgl/core/*.py")])
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "open", "import_module", "load", "loads",
                   "system", "popen", "Popen", "run", "Path", "read_text", "read_bytes"}
FORBIDDEN_MODULES = {"pickle", "dill", "marshal", "shelve", "subprocess", "cloudpickle"}
# The one place a path is read: the operator's ESAMP_SGL_CONFIG file, from the server's environment.
ALLOWED = {("runtime_patch/settings.py", "Path"), ("runtime_patch/settings.py", "read_text"),
           ("runtime_patch/settings.py", "loads"),
           ("runtime_patch/grouping.py", "re.compile")}  # a constant pattern, compiled at import


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _qualified(node: ast.Call) -> str | None:
    """`re.compile` for a call of an attribute of a plain name, else the bare name."""
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return _call_name(node)


def test_server_side_code_never_evaluates_unpickles_or_opens_anything():
    assert len(SERVER_SIDE) >= 15
    found = []
    for path in SERVER_SIDE:
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Call) and _call_name(node) in FORBIDDEN_CALLS:
                if (rel, _call_name(node)) not in ALLOWED and (rel, _qualified(node)) not in ALLOWED:
                    found.append(f"{rel}:{node.lineno} {_call_name(node)}()")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{rel}:{node.lineno} import {n}" for n in names
                          if n and n.split(".")[0] in FORBIDDEN_MODULES]
    assert found == []


def test_the_scan_would_catch_a_forbidden_call(tmp_path):
    """The scan above is only worth something if it flags these patterns."""
    sample = "import pickle\nx = eval(s)\ny = pickle.loads(b)\nopen(p)\n"
    tree = ast.parse(sample)
    calls = {_call_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert {"eval", "loads", "open"} <= calls & FORBIDDEN_CALLS
    assert any(isinstance(n, ast.Import) and n.names[0].name in FORBIDDEN_MODULES for n in ast.walk(tree))


@pytest.mark.e2e
def test_exploration_works_without_custom_logit_processors_which_stay_disabled(esamp_server, chat_prompt):
    assert "--enable-custom-logit-processor" not in esamp_server.args
    body = {"text": chat_prompt("Hi"), "sampling_params": {"max_new_tokens": 4, "custom_params": {"esamp": True}}}
    ok = requests.post(esamp_server.url + "/generate", json=body, timeout=120)
    assert ok.status_code == 200 and ok.json()["meta_info"]["esamp"][0]["status"] == "ok"
    refused = requests.post(esamp_server.url + "/generate", json={**body, "custom_logit_processor": "gASVAA=="},
                            timeout=120)
    assert refused.status_code == 400 and "enable-custom-logit-processor" in refused.text


@pytest.mark.e2e
@pytest.mark.parametrize("group", ["../../../etc/passwd", "__import__('os').system('touch /tmp/pwned')",
                                   "{{7*7}} ${HOME} %s%n", "/dev/zero", "x" * 128])
def test_group_ids_are_opaque_strings(esamp_server, chat_prompt, group):
    body = {"text": chat_prompt("Hi"), "sampling_params": {
        "max_new_tokens": 3, "custom_params": {"esamp": True, "esamp_group": group}}}
    response = requests.post(esamp_server.url + "/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    report = response.json()["meta_info"]["esamp"][0]
    assert report["group"] == group and report["status"] == "ok"
    assert not Path("/tmp/pwned").exists()


@pytest.mark.e2e
def test_a_response_carries_only_its_own_groups_telemetry(esamp_server, chat_prompt):
    groups = {name: f"tenant-{name}-{uuid.uuid4().hex}" for name in ("a", "b")}
    responses: dict[str, dict] = {}

    def run(name: str) -> None:
        body = {"text": chat_prompt("Write a line about the sea."), "sampling_params": {
            "max_new_tokens": 12, "ignore_eos": True, "n": 2, "temperature": 1.0,
            "custom_params": {"esamp": True, "esamp_group": groups[name]}}}
        responses[name] = requests.post(esamp_server.url + "/generate", json=body, timeout=300).json()

    threads = [threading.Thread(target=run, args=(name,)) for name in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, other in (("a", "b"), ("b", "a")):
        outs = responses[name]
        assert {o["meta_info"]["esamp"][0]["group"] for o in outs} == {groups[name]}
        assert groups[other] not in json.dumps(outs)  # the server summary holds counts, never group ids
