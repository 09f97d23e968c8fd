"""Verifiers on hand-written known-good and known-bad answers (no model involved)."""

from __future__ import annotations

import socket
import threading
import time
from fractions import Fraction

import pytest

from esamp_sgl.eval.sandbox import SandboxLimits, run_python_tests
from esamp_sgl.eval.verifiers import MathAnswerVerifier, PythonTestsVerifier, Verdict, extract_code, extract_number

FAST = SandboxLimits(wall_seconds=4.0, cpu_seconds=2)


# -- math --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, value", [
    ("The answer is 42.", 42),
    ("17 + 25 = 42", 42),
    ("It costs $1,234.50 in total", Fraction(2469, 2)),
    ("x = -3", -3),
    ("temperature fell to \u22125 degrees", -5),
    ("10-3", 3),  # a binary minus is not a sign
    ("10 - 7", 7),
    ("It is 3/4.", Fraction(3, 4)),
    ("so the share is 1/2.", Fraction(1, 2)),
    ("-3/4", Fraction(-3, 4)),
    ("0.75", Fraction(3, 4)),
    ("\\boxed{\\frac{3}{4}} and then 7 more words", Fraction(3, 4)),
    ("first 5, finally \\boxed{-12}", -12),
    ("\\boxed{1,000}", 1000),
    ("\\boxed{\\dfrac{-6}{4}}", Fraction(-3, 2)),
    ("Total: $1,000,000", 1_000_000),
    ("3,4,5", 5),
    ("Step 1: 2+2=4\nStep 2: 4*3=12\nAnswer: 12", 12),
])
def test_extract_number(answer, value):
    assert extract_number(answer) == value


def test_extract_number_without_a_number():
    assert extract_number("no digits here") is None
    assert extract_number("\\boxed{x}") is None


@pytest.mark.parametrize("expected, good, bad", [
    (42, "So 17 + 25 = 42.", "I think it is 41."),
    ("3/4", "The fraction is 0.75", "The fraction is 0.7"),
    (0.75, "\\boxed{\\frac{3}{4}}", "\\boxed{\\frac{4}{3}}"),
    (-12, "The result is \u221212", "The result is 12"),
    (1234, "1,234", "1,243"),
    (Fraction(7, 2), "3.5 apples", "3.50001 apples"),
])
def test_math_verifier_scores_known_good_and_bad_answers(expected, good, bad):
    verifier = MathAnswerVerifier(expected)
    assert verifier(good) == Verdict(1.0, True, verifier(good).detail)
    verdict = verifier(bad)
    assert verdict.score == 0.0 and not verdict.passed and "expected" in verdict.detail
    assert verifier("no number at all") == Verdict(0.0, False, "no number in the answer")


def test_math_verifier_rejects_bad_expected_values():
    with pytest.raises(ValueError, match="contains no number"):
        MathAnswerVerifier("forty-two")
    with pytest.raises(TypeError):
        MathAnswerVerifier(True)


# -- code extraction ---------------------------------------------------------------------------------
def test_extract_code_prefers_the_last_python_block():
    answer = "Try:\n```\nprint('x')\n```\nBetter:\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(answer) == "def f():\n    return 1\n"
    assert extract_code("```\na = 1\n```") == "a = 1\n"
    assert extract_code("def g(): return 2") == "def g(): return 2"
    assert extract_code("Here:\n```python\ndef h():\n    return 3\n") == "def h():\n    return 3\n"  # cut off


# -- code verifier and sandbox -----------------------------------------------------------------------
ADD_TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


def test_python_verifier_scores_known_good_and_bad_code():
    verifier = PythonTestsVerifier(ADD_TESTS, FAST)
    good = verifier("Sure!\n```python\ndef add(a, b):\n    return a + b\n```")
    assert good.score == 1.0 and good.passed and "3/3" in good.detail
    partial = verifier("```python\ndef add(a, b):\n    return a + b if a != 10 else 0\n```")
    assert partial.score == pytest.approx(2 / 3) and not partial.passed
    bad = verifier("```python\ndef add(a, b):\n    return a - b\n```")
    assert bad.score == 0.0 and not bad.passed and "AssertionError" in bad.detail
    broken = verifier("```python\ndef add(a, b) return a\n```")
    assert broken.score == 0.0 and "SyntaxError" in broken.detail
    missing = verifier("I cannot write code.")
    assert missing.score == 0.0


def test_python_verifier_rejects_bad_tests():
    with pytest.raises(ValueError, match="non-empty list"):
        PythonTestsVerifier("assert True")
    with pytest.raises(ValueError, match=r"tests\[1\] is not valid Python"):
        PythonTestsVerifier(["assert True", "assert ("])


def test_an_infinite_loop_is_killed_and_fails():
    started = time.monotonic()
    verdict = PythonTestsVerifier(ADD_TESTS, FAST)("```python\ndef add(a, b):\n    while True:\n        pass\n```")
    assert verdict.score == 0.0 and not verdict.passed
    assert "SIGXCPU" in verdict.detail or "SIGKILL" in verdict.detail or "timeout" in verdict.detail
    assert time.monotonic() - started < FAST.wall_seconds + 3


def test_a_sleeping_candidate_hits_the_wall_timeout():
    limits = SandboxLimits(wall_seconds=1.5, cpu_seconds=5)
    result = run_python_tests("import time\ntime.sleep(60)\n", ["assert True"], limits)
    assert result.status == "timeout" and result.passed == [False] and result.wall_seconds < 4


FORK_BOMB = "import os\ndef add(a, b):\n    while True:\n        os.fork()\n"


def test_a_fork_bomb_is_contained_and_fails():
    result = run_python_tests(FORK_BOMB, ADD_TESTS, FAST)
    assert result.passed == [False, False, False]
    assert "os.fork is not allowed" in result.errors[0]


def test_without_the_audit_hook_a_fork_bomb_meets_the_process_limit():
    limits = SandboxLimits(wall_seconds=4.0, cpu_seconds=2, audit_hook=False, max_processes=8)
    result = run_python_tests(FORK_BOMB, ["assert add(1, 1) == 2"], limits)
    assert result.passed == [False]
    assert result.status != "ok" or "Resource temporarily unavailable" in result.errors[0]


def _listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[bool] = []

    def accept() -> None:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
                accepted.append(True)
                conn.close()
            except socket.timeout:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return server, thread, accepted


def _network_candidate(port: int) -> str:
    return (f"import socket\ndef add(a, b):\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    s.sendall(b'hi')\n    return a + b\n")


@pytest.mark.parametrize("limits", [FAST, SandboxLimits(wall_seconds=4.0, cpu_seconds=2, audit_hook=False)],
                         ids=["default", "network-namespace-only"])
def test_a_network_connection_attempt_is_blocked_and_fails(limits):
    server, thread, accepted = _listener()
    try:
        result = run_python_tests(_network_candidate(server.getsockname()[1]), ["assert add(2, 3) == 5"], limits)
        if not limits.audit_hook and result.isolation.get("network") != "netns":
            pytest.skip(f"no network namespace here ({result.isolation.get('network')}); the audit hook is the guard")
    finally:
        time.sleep(0.3)
        server.close()
        thread.join(2)
    assert result.passed == [False]
    assert not accepted, "the sandboxed candidate reached a listening socket"
    assert "not allowed" in result.errors[0] or "unreachable" in result.errors[0].lower()


def test_writes_outside_the_work_directory_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python_tests(f"open({str(target)!r}, 'w').write('x')\n", ["assert True"], FAST)
    assert result.status == "error" and not target.exists()
    inside = run_python_tests("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n",
                              ["assert True"], FAST)
    assert inside.passed == [True]


def test_runaway_output_and_memory_are_cut():
    printing = run_python_tests("while True:\n    print('x' * 4096)\n", ["assert True"],
                                SandboxLimits(wall_seconds=4.0, cpu_seconds=2, file_size_bytes=1 << 20))
    assert printing.passed == [False]
    hungry = run_python_tests("blob = bytearray(4 << 30)\n", ["assert True"], FAST)
    assert hungry.passed == [False] and "MemoryError" in hungry.errors[0]


def test_sandbox_limits_are_validated():
    with pytest.raises(ValueError, match="wall_seconds"):
        SandboxLimits(wall_seconds=0)
    with pytest.raises(ValueError, match="sandbox_uid"):
        SandboxLimits(sandbox_uid=0)
    with pytest.raises(ValueError, match="memory_bytes"):
        SandboxLimits(memory_bytes=1024)
