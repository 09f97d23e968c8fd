"""An append-only JSONL of finished pass@k jobs, so `esamp-sgl eval passk --resume` continues a run.

One line per finished (task, arm) job: its samples' texts, keyed by the task index, the arm's name and
what decides its samples (the prompt's token ids, samples, token budget, stop strings). A resumed run
reuses a line only when every key field matches; a line from other arguments is ignored, and a
truncated last line (the run was killed while writing it) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Sequence

JOURNAL_NAME = "generations.jsonl"


def job_key(task: int, arm: str, prompt_ids: Sequence[int], count: int, max_tokens: int,
            stop: Sequence[str] | None) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(list(prompt_ids)).encode()).hexdigest()[:16]
    return {"task": task, "arm": arm, "prompt_sha256": digest, "n": count, "max_tokens": max_tokens,
            "stop": list(stop) if stop else None}


class PassKJournal:
    """Thread-safe appends (the jobs finish on a thread pool) and the lookup of finished jobs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._done: dict[str, list[str]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                    self._done[self._id(record["key"])] = list(record["texts"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interruption
        path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _id(key: dict[str, Any]) -> str:
        return json.dumps(key, sort_keys=True)

    def finished(self, key: dict[str, Any]) -> list[str] | None:
        """The texts of a job finished in an earlier run with the same key, else None."""
        return self._done.get(self._id(key))

    def record(self, key: dict[str, Any], texts: Sequence[str]) -> None:
        line = json.dumps({"key": key, "texts": list(texts)}) + "\n"
        with self._lock, self.path.open("a") as fh:
            fh.write(line)
            fh.flush()
        self._done[self._id(key)] = list(texts)

    def __len__(self) -> int:
        return len(self._done)
