"""GSM8K and HumanEval from their PyPI packages: answers, prompts, the sandboxed tests, the fixed split."""

from __future__ import annotations

import pytest

from esamp_sgl.eval import public_tasks
from esamp_sgl.eval.passk import verifier_for
from esamp_sgl.eval.tasks import TASK_DEFAULTS, load_tasks


def test_gsm8k_reference_numbers():
    assert public_tasks.gsm8k_reference("She makes 9 * 2 = $18.\n#### 18") == "18"
    assert public_tasks.gsm8k_reference("...\n#### 1,450,000") == "1450000"
    assert public_tasks.gsm8k_reference("#### -3") == "-3"
    with pytest.raises(ValueError, match="no '#### N' line"):
        public_tasks.gsm8k_reference("the answer is 4")


def test_gsm8k_tasks_and_split():
    dev, held = load_tasks("gsm8k", count=None, split="dev"), load_tasks("gsm8k", count=None, split="heldout")
    assert len(dev) == 1000 and len(held) == 319
    assert dev[0]["id"] == "gsm8k/test/0" and held[0]["id"] == "gsm8k/test/1000" and dev[0]["answer"] == "18"
    assert dev[0]["prompt"].startswith(public_tasks.GSM8K_INSTRUCTION) and "Janet" in dev[0]["prompt"]
    assert not {t["id"] for t in dev} & {t["id"] for t in held}
    assert [t["id"] for t in load_tasks("gsm8k", count=3)] == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2"]
    assert TASK_DEFAULTS["gsm8k"].chat and TASK_DEFAULTS["gsm8k"].max_tokens == 256
    with pytest.raises(ValueError, match="--split must be one of dev, heldout"):
        load_tasks("gsm8k", split="test")


def test_gsm8k_verifier_reads_boxed_then_last_number():
    verify = verifier_for(load_tasks("gsm8k", count=1)[0])  # answer 18
    assert verify("16 - 3 - 4 = 9 eggs, 9 * 2 = 18. \\boxed{18}").passed
    assert verify("\\boxed{18} dollars, which is 9 eggs times 2").passed  # boxed wins over later numbers
    assert verify("She sells 9 eggs at $2, so she makes $18.").passed  # no box: the last number
    assert not verify("She makes 18 dollars... no wait, 20").passed
    assert not verify("I don't know").passed


def test_humaneval_tasks_and_split():
    dev, held = load_tasks("humaneval", count=None), load_tasks("humaneval", count=None, split="heldout")
    assert len(dev) == 82 and len(held) == 82
    assert all(public_tasks.humaneval_number(t["id"]) % 2 == 0 for t in dev)
    assert all(public_tasks.humaneval_number(t["id"]) % 2 == 1 for t in held)
    first = dev[0]
    assert first["id"] == "HumanEval/0" and first["prompt"] == first["code_prefix"]
    assert first["prompt"].rstrip().endswith('"""') and "def has_close_elements" in first["prompt"]
    assert first["tests"][0].rstrip().endswith("check(has_close_elements)")
    assert not TASK_DEFAULTS["humaneval"].chat and "\ndef " in TASK_DEFAULTS["humaneval"].stop


@pytest.mark.parametrize("index", [0, 1])  # HumanEval/0 and HumanEval/2
def test_humaneval_canonical_solution_passes_in_the_sandbox_and_a_wrong_one_fails(index):
    task = load_tasks("humaneval", count=2)[index]
    verify = verifier_for(task)
    verdict = verify(task["canonical_solution"])
    assert verdict.passed, verdict.detail
    wrong = verify("    return None\n")
    assert not wrong.passed and "0/1 tests passed" in wrong.detail
