"""Run untrusted Python (a model's code answer) against tests in a contained subprocess.

`run_python_tests(code, tests)` starts `python -I esamp_sgl/eval/sandbox_harness.py` in a new session with:

* resource limits (`SandboxLimits`): CPU seconds, address space, file size (stdout/stderr are files,
  so runaway printing is cut too), open files, processes (RLIMIT_NPROC), no core dumps;
* a wall-clock timeout after which the whole process group is frozen (SIGSTOP), its descendants are
  collected, and everything is SIGKILLed;
* no network: a new network namespace when the kernel allows it (as root: CLONE_NEWNET; otherwise a
  user+network namespace), and in every case an audit hook that refuses socket creation/connection;
* as root, the candidate runs as `sandbox_uid` (nobody), so RLIMIT_NPROC applies (the kernel exempts
  root from it) and the file system is read-only to it outside the work directory;
* the audit hook also refuses process creation, signals, native (ctypes) calls and writes outside
  the work directory, so a fork bomb dies at its first fork.

Limits of the containment: it is not a security boundary against code written to attack this
harness (an in-process audit hook can in principle be subverted, and a candidate that knows the
harness could forge its verdict line); it contains accidents, runaway loops, fork bombs, network
use and the ordinary damage a wrong program does. Linux only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

HARNESS = Path(__file__).with_name("sandbox_harness.py")
NOBODY_UID = 65534


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 8 << 20
    open_files: int = 64
    max_processes: int = 16
    isolate_network: bool = True  # new network namespace when the kernel allows it
    audit_hook: bool = True  # refuse sockets, process creation, ctypes and outside writes in-process
    drop_root: bool = True  # as root, run the candidate as sandbox_uid
    sandbox_uid: int = NOBODY_UID

    def __post_init__(self) -> None:
        positive = {"wall_seconds": self.wall_seconds, "cpu_seconds": self.cpu_seconds,
                    "memory_bytes": self.memory_bytes, "file_size_bytes": self.file_size_bytes,
                    "open_files": self.open_files, "max_processes": self.max_processes}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
        if self.open_files < 16:
            raise ValueError(f"SandboxLimits.open_files must be at least 16 (Python needs a few), got {self.open_files}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(f"SandboxLimits.memory_bytes must be at least 64 MiB, got {self.memory_bytes}")
        if not isinstance(self.sandbox_uid, int) or self.sandbox_uid <= 0:
            raise ValueError(f"SandboxLimits.sandbox_uid must be a non-root uid, got {self.sandbox_uid!r}")


@dataclass
class SandboxResult:
    passed: list[bool]  # one per test
    errors: list[str]  # one per test ("" when it passed)
    loaded: bool  # the candidate code itself ran without raising
    status: str  # "ok" | "error" | "timeout" | "killed (SIGXCPU)" | "no verdict (exit code 1)" ...
    wall_seconds: float
    isolation: dict = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def fraction_passed(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.passed) and all(self.passed) and self.status == "ok"


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait for `pid` to exit WITHOUT reaping it, so its pid (= the process group id) cannot be reused
    before we kill what is left of the group."""
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        if info is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _kill_group(pgid: int) -> None:
    """Freeze the group, collect every descendant (also ones that left the group), kill them all."""
    import psutil

    try:
        os.killpg(pgid, signal.SIGSTOP)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        descendants = psutil.Process(pgid).children(recursive=True)
    except psutil.Error:
        descendants = []
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for process in descendants:
        try:
            process.kill()
        except psutil.Error:
            pass


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_python_tests(code: str, tests: Sequence[str], limits: SandboxLimits | None = None,
                     python: str | None = None) -> SandboxResult:
    """Execute `code`, then each test snippet (e.g. "assert add(2, 3) == 5") in its namespace."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if isinstance(tests, str) or not all(isinstance(t, str) for t in tests) or not tests:
        raise TypeError("tests must be a non-empty sequence of Python snippets (str)")
    limits = limits or SandboxLimits()
    tests = list(tests)
    root = Path(tempfile.mkdtemp(prefix="esamp-sandbox-"))
    try:
        work = root / "work"
        work.mkdir()
        as_root = os.geteuid() == 0 and limits.drop_root
        if as_root:
            os.chown(work, limits.sandbox_uid, limits.sandbox_uid)
        work.chmod(0o700)
        harness = root / "harness.py"
        shutil.copyfile(HARNESS, harness)
        harness.chmod(0o644)
        nonce = f"@@verdict-{secrets.token_hex(16)}@@"
        config = root / "config.json"
        config.write_text(json.dumps({
            "code": code, "tests": tests, "nonce": nonce, "work_dir": str(work),
            "isolate_network": limits.isolate_network, "audit_hook": limits.audit_hook,
            "drop_root": as_root, "sandbox_uid": limits.sandbox_uid,
            "limits": {k: v for k, v in asdict(limits).items() if k not in ("wall_seconds",)},
        }))
        out_path, err_path = root / "stdout", root / "stderr"
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work)}
        started = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = subprocess.Popen([python or sys.executable, "-I", str(harness), str(config)],
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                                       start_new_session=True, close_fds=True)
        finished = _wait_unreaped(process.pid, started + limits.wall_seconds)
        _kill_group(process.pid)  # on time-out: everything; otherwise: whatever the candidate left behind
        returncode = process.wait()
        elapsed = time.monotonic() - started
        stderr_tail = _tail(err_path)
        verdict = None
        for line in _tail(out_path, 1 << 20).splitlines():
            if line.startswith(nonce):
                verdict = json.loads(line[len(nonce):])
        failed = [False] * len(tests)
        if not finished:
            return SandboxResult(failed, ["timeout"] * len(tests), False, "timeout", elapsed, stderr_tail=stderr_tail)
        if verdict is None:
            why = f"killed ({_signal_name(returncode)})" if returncode < 0 else f"no verdict (exit code {returncode})"
            return SandboxResult(failed, [why] * len(tests), False, why, elapsed, stderr_tail=stderr_tail)
        status = "ok" if verdict["loaded"] else "error"
        return SandboxResult(verdict["tests"], verdict["errors"], verdict["loaded"], status, elapsed,
                             verdict.get("isolation", {}), stderr_tail)
    finally:
        shutil.rmtree(root, ignore_errors=True)
