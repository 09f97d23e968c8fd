"""The in-process path, run as a script by test_lang_engine.py (sglang.Engine needs its own process:
its shutdown kills every child of the calling process, which in pytest would include the session's
server). Prints one JSON line of observations."""

from __future__ import annotations

import json

from esamp_sgl.lang import (assistant, explore_report, explore_reports, function, gen, group_of, open_engine_backend,
                            user)


@function
def everything(s):
    s += user("Name a color.")
    forks = s.fork(3)
    forks += assistant(gen("color", max_tokens=8, temperature=1.0, ignore_eos=True, explore=True))
    reports = [explore_report(f, "color") for f in forks]
    groups = [group_of(f) for f in forks]
    # ignore_eos leaves the chat template's stop string (<|im_end|>) in force: a fork may stop early.
    fork_tokens = [f.get_meta_info("color")["completion_tokens"] for f in forks]
    forks.join()
    s += user("Is red a color? Answer yes or no.")
    s += assistant(gen("answer", choices=["yes", "no"]))
    s += user("Name two animals.")
    s += assistant(gen("animals", max_tokens=6, n=2, explore=True))
    return groups, reports, fork_tokens


@function
def streamed(s):
    s += user("Count to three.")
    s += assistant(gen("count", max_tokens=8, explore=True))


def main() -> None:
    with open_engine_backend() as backend:
        state = everything.run(backend=backend)
        groups, reports, fork_tokens = state.ret_value
        stream_state = streamed.run(backend=backend, stream=True)
        chunks = list(stream_state.text_iter("count"))
        out = {
            "error": repr(state.error()) if state.error() else None,
            "groups": groups,
            "report_groups": [r["group"] if r else None for r in reports],
            "predictions": max(r["predictions"] for r in reports),
            "member_reports": [{k: r.get(k) for k in ("predictions", "tokens_reweighted", "steps_trained",
                                                      "warm_start_positions")} if r else None for r in reports],
            "completion_tokens": sum(fork_tokens),
            "answer": state["answer"],
            "animals": state["animals"],
            "animal_groups": [r["group"] if r else None for r in explore_reports(state, "animals")],
            "stream_chunks": len(chunks),
            "stream_text": stream_state["count"],
            "stream_error": repr(stream_state.error()) if stream_state.error() else None,
        }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
