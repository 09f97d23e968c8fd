"""The helpers the CLIs, the benchmarks and the examples share (no server is started here)."""

from __future__ import annotations

import os

import pytest

from esamp_sgl.bench.memory import rss_bytes
from esamp_sgl.core.telemetry import group_report
from esamp_sgl.eval.metrics import mean_output_nll
from esamp_sgl.launch.prompts import chatml
from esamp_sgl.launch.server import server_or_url


def test_group_report_is_the_member_with_most_predictions():
    a, b = {"group": "g", "predictions": 3}, {"group": "g", "predictions": 7}
    assert group_report([a, None, b]) is b
    assert group_report([None, None]) is None and group_report([]) is None
    assert group_report([{"predictions": None}, a]) is a


def test_mean_output_nll_reads_the_last_tokens():
    logprobs = [(None, 1, None), (-9.0, 2, None), (-1.0, 3, None), (-3.0, 4, None)]
    assert mean_output_nll(logprobs, 2) == pytest.approx(2.0)
    assert mean_output_nll([], 3) == 0.0


def test_chatml_renders_one_user_turn():
    assert chatml("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_server_or_url_uses_a_given_url_without_starting_anything():
    def never():
        raise AssertionError("the model must not be resolved when a URL is given")

    with server_or_url("http://127.0.0.1:1", never) as (url, server):
        assert (url, server) == ("http://127.0.0.1:1", None)


def test_rss_bytes_sums_and_missing_processes_raise_unless_allowed():
    mine = rss_bytes([os.getpid()])
    assert mine > 0 and rss_bytes([os.getpid(), os.getpid()]) >= 2 * mine * 0.9
    gone = 2**22 + 12345  # above the default pid_max
    assert rss_bytes([gone], missing_ok=True) == 0
    with pytest.raises(Exception):
        rss_bytes([gone])
