"""`esamp-sgl bench router` builds the router's command line without starting anything (the run itself is
scripts/router_demo.sh: two SGLang workers and the router, minutes on CPU)."""

from __future__ import annotations

import sys

from esamp_sgl.bench.router import ROUTERS, router_command, router_env


def test_smg_gets_every_policy_from_its_cli_and_binds_loopback_only():
    cmd = router_command("smg", 30000, ["http://127.0.0.1:1", "http://127.0.0.1:2"], "consistent_hashing", 30001)
    assert cmd[:3] == [sys.executable, "-m", "smg.launch_router"]
    assert cmd[cmd.index("--policy") + 1] == "consistent_hashing"
    assert cmd[cmd.index("--host") + 1] == cmd[cmd.index("--prometheus-host") + 1] == "127.0.0.1"


def test_sglang_router_consistent_hashing_goes_through_its_python_api():
    cmd = router_command("sglang-router", 30000, ["http://127.0.0.1:1"], "consistent_hashing", 30001)
    assert cmd[1] == "-c" and "a.policy = 'consistent_hashing'" in cmd[2]
    assert cmd[cmd.index("--policy") + 1] == "manual"  # what its CLI accepts; replaced after parsing
    plain = router_command("sglang-router", 30000, ["http://127.0.0.1:1"], "cache_aware", 30001)
    assert plain[1:3] == ["-m", "sglang_router.launch_router"]
    assert set(ROUTERS) == {"smg", "sglang-router"}


def test_the_router_runs_from_its_own_install_directory(tmp_path):
    env = router_env(str(tmp_path))
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path)
