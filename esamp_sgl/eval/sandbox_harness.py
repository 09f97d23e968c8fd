"""Runs inside the sandbox process (`python -I sandbox_harness.py CONFIG`); see esamp_sgl/eval/sandbox.py.

Trusted code first, then the candidate: read the config, enter a new network namespace, preload
common stdlib modules, set resource limits, drop root to the sandbox uid, install an audit hook
that refuses sockets, process creation, signals to other processes, native calls and writes outside
the work directory, and only then execute the candidate and its tests. The verdict goes to the
original stdout as one line prefixed with a nonce; the candidate's own prints go to stderr.

Stdlib only: when the sandbox drops root, modules that were not preloaded may become unreadable.
"""

import json
import os
import resource
import sys

# Imported before privileges are dropped, so candidates can use them afterwards.
PRELOAD = (
    "array", "base64", "bisect", "cmath", "collections", "collections.abc", "copy", "dataclasses", "datetime",
    "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools", "math", "operator",
    "random", "re", "statistics", "string", "struct", "textwrap", "time", "traceback", "typing", "unicodedata",
    # Preloaded so that what stops a candidate's network or process use is the sandbox, not a failed import.
    "socket", "subprocess", "encodings.idna",
)

BLOCKED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.sendto", "socket.sendmsg",
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle",
    "sys.addaudithook",
})
BLOCKED_IMPORTS = frozenset({"_ctypes"})
PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                         "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.copyfile", "os.chdir"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def enter_network_namespace() -> str:
    """A private network namespace (no interfaces but a down loopback), if the kernel allows it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else (CLONE_NEWUSER | CLONE_NEWNET)
    ok = libc.unshare(flags) == 0
    return "netns" if ok else f"none (unshare: {os.strerror(ctypes.get_errno())})"


def set_limits(limits: dict) -> None:
    def cap(which: int, value: int, hard_extra: int = 0) -> None:
        _, hard = resource.getrlimit(which)
        limit = value + hard_extra
        if hard != resource.RLIM_INFINITY:
            value, limit = min(value, hard), min(limit, hard)
        resource.setrlimit(which, (value, limit))

    # CPU: SIGXCPU at the soft limit, SIGKILL one second later if it is caught.
    cap(resource.RLIMIT_CPU, int(limits["cpu_seconds"]), hard_extra=1)
    cap(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    cap(resource.RLIMIT_FSIZE, int(limits["file_size_bytes"]))
    cap(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    cap(resource.RLIMIT_NPROC, int(limits["max_processes"]))
    cap(resource.RLIMIT_CORE, 0)


def drop_root(uid: int) -> str:
    if os.geteuid() != 0:
        return f"uid {os.geteuid()}"
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    return f"uid {uid}"


def make_audit_hook(work_dir: str):
    work = os.path.realpath(work_dir) + os.sep

    def inside(path) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return (full + os.sep).startswith(work)

    def hook(event: str, args: tuple) -> None:
        if event in BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args and args[0] in BLOCKED_IMPORTS:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the work directory is not allowed")
        elif event in PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                    raise PermissionError(f"sandbox: {event} on {path!r} is not allowed")

    return hook


def run_candidate(code: str, tests: list) -> dict:
    import traceback

    namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
    results = []
    try:
        exec(compile(code, "<candidate>", "exec"), namespace)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends count as failures too
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return {"loaded": False, "error": error[-2000:], "tests": [False] * len(tests), "errors": [error[-500:]] * len(tests)}
    errors = []
    for index, test in enumerate(tests):
        try:
            exec(compile(test, f"<test {index}>", "exec"), namespace)
            results.append(True)
            errors.append("")
        except BaseException as exc:  # noqa: BLE001
            results.append(False)
            errors.append("".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:])
    return {"loaded": True, "error": "", "tests": results, "errors": errors}


def main() -> None:
    config_path = sys.argv[1]
    with open(config_path) as f:
        config = json.load(f)
    os.remove(config_path)  # the nonce is not left on disk for the candidate
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # candidate prints go to stderr; the verdict line uses `report`
    sys.stdout = sys.stderr

    isolation = {"network": "not requested", "user": f"uid {os.geteuid()}", "audit_hook": False}
    if config["isolate_network"]:
        isolation["network"] = enter_network_namespace()
    for name in PRELOAD:
        __import__(name)
    os.chdir(config["work_dir"])
    set_limits(config["limits"])
    if config["drop_root"]:
        isolation["user"] = drop_root(int(config["sandbox_uid"]))
    for name in ("ctypes", "_ctypes"):  # loaded by enter_network_namespace; a re-import meets the audit hook
        sys.modules.pop(name, None)
    if config["audit_hook"]:
        sys.addaudithook(make_audit_hook(config["work_dir"]))
        isolation["audit_hook"] = True

    outcome = run_candidate(config["code"], config["tests"])
    outcome["isolation"] = isolation
    report.write(config["nonce"] + json.dumps(outcome) + "\n")
    report.flush()
    os._exit(0)  # skip interpreter teardown (atexit handlers the candidate may have registered)


if __name__ == "__main__":
    main()
