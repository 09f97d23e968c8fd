"""`esamp-sgl eval passk --resume`: finished (task, arm) jobs are journaled as they complete and reused."""

from __future__ import annotations

import json
from types import SimpleNamespace

from esamp_sgl.eval import passk
from esamp_sgl.eval.arms import parse_arms
from esamp_sgl.eval.journal import PassKJournal

TASKS = [{"prompt": "1+1", "answer": "2"}, {"prompt": "2+2", "answer": "4"}]
PROMPT_IDS = [[1, 2], [3, 4]]


class FakeClient:
    """Answers every request with `count` copies of the right answer; counts the requests."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call

    def generate(self, prompt_ids, count, max_tokens, params, stop=None):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise ConnectionError("server went away")
        answer = "2" if prompt_ids == PROMPT_IDS[0] else "4"
        return SimpleNamespace(samples=[SimpleNamespace(text=answer) for _ in range(count)])


def _run(client, journal, arms):
    return passk.run(client, TASKS, PROMPT_IDS, arms, n=2, max_tokens=8, stop=None, concurrency=1,
                     journal=journal)


def test_resume_skips_finished_jobs(tmp_path):
    arms = parse_arms("stock:T=1.0;stock:T=0.7")
    path = tmp_path / "generations.jsonl"
    interrupted = FakeClient(fail_on_call=4)  # 2 tasks x (2 arms + greedy) = 6 jobs; dies at the 4th
    try:
        _run(interrupted, PassKJournal(path), arms)
    except ConnectionError:
        pass
    finished = len(path.read_text().splitlines())
    assert 3 <= finished < 6  # the 3 before the failure, perhaps one already running
    with path.open("a") as fh:
        fh.write('{"key": {"task": 1, "arm"')  # a line cut short by the interruption
    resumed = FakeClient()
    result = _run(resumed, PassKJournal(path), arms)
    assert resumed.calls == 6 - finished  # only the unfinished jobs
    assert all(s["pass_at_k"][1]["mean"] == 1.0 for s in result["summary"].values())
    assert result["greedy_accuracy"] == 1.0


def test_a_journal_from_other_arguments_is_not_reused(tmp_path):
    arms = parse_arms("stock:T=1.0")
    path = tmp_path / "generations.jsonl"
    _run(FakeClient(), PassKJournal(path), arms)
    again = FakeClient()
    passk.run(again, TASKS, PROMPT_IDS, arms, n=2, max_tokens=16, stop=None, concurrency=1,
              journal=PassKJournal(path))
    assert again.calls == 4  # another token budget: every job runs again
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert {k["max_tokens"] for k in keys} == {8, 16}
