"""The exploring DSL against the real CPU server (`--sampling-backend esamp`, SmolLM2-135M)."""

from __future__ import annotations

import pytest

from esamp_sgl.lang import (ESampRuntimeEndpoint, assistant, explore_report, explore_reports, function, gen, group_of,
                            user)

pytestmark = pytest.mark.e2e

SAMPLING = {"max_tokens": 24, "temperature": 1.0, "min_p": 0.05}


@pytest.fixture(scope="module")
def backend(esamp_server):
    return ESampRuntimeEndpoint(esamp_server.url)


def test_the_endpoint_picks_chatml_for_the_local_smollm2_folder(backend):
    assert backend.chat_template.name == "chatml"


def test_fork4_children_share_one_group_and_one_distiller_trained_on_all_their_steps(backend):
    @function
    def poem(s):
        s += user("Write one line about the sea.")
        forks = s.fork(4)
        # 48 forced tokens each: the four requests overlap for seconds, so they share one live Distiller
        # (a group whose last request finished starts over with a fresh one).
        forks += assistant(gen("line", max_tokens=48, ignore_eos=True, temperature=1.0, min_p=0.05, explore=True,
                               beta=1.0))
        out = [(group_of(f), explore_report(f, "line"), f.get_meta_info("line")["completion_tokens"]) for f in forks]
        forks.join()
        return group_of(s), out

    root, children = poem.run(backend=backend).ret_value
    reports = [report for _, report, _ in children]
    assert all(r is not None and r["status"] == "ok" for r in reports)
    groups = {r["group"] for r in reports}
    assert groups == {g for g, _, _ in children} == {f"{root}/0"}  # the four children: one group
    decode_steps = sum(tokens for _, _, tokens in children)
    last = max(reports, key=lambda r: r["predictions"])  # the member that finished last saw every step
    # Every step of every member predicted by the group's one Distiller (+1 per member: the overlap
    # scheduler may run one extra step for a request that just finished).
    assert decode_steps <= last["predictions"] <= decode_steps + len(children)
    assert last["steps_trained"] > 0 and last["tokens_reweighted"] > 0


def test_without_explore_no_group_is_created(backend):
    @function
    def plain(s):
        s += user("Say hi.")
        forks = s.fork(2)
        forks += assistant(gen("hi", explore=False, **SAMPLING))
        out = [f.get_meta_info("hi") for f in forks]
        forks.join()
        return out

    metas = plain.run(backend=backend).ret_value
    assert all(m["completion_tokens"] > 0 and not m.get("esamp") for m in metas)


def test_run_batch_with_explore_gives_each_program_its_own_group(backend):
    @function
    def answer(s, question):
        s += user(question)
        s += assistant(gen("a", explore=True, **SAMPLING))
        return group_of(s)

    states = answer.run_batch([{"question": q} for q in ("Name a fruit.", "Name a color.", "Name a city.")],
                              backend=backend, num_threads=3)
    reported = [explore_report(st, "a") for st in states]
    assert [r["group"] for r in reported] == [st.ret_value for st in states]
    assert len({r["group"] for r in reported}) == 3 and all(r["steps_trained"] > 0 for r in reported)


def test_streaming_with_explore(backend):
    @function
    def story(s):
        s += user("Tell a very short story.")
        s += assistant(gen("story", explore=True, **SAMPLING))

    state = story.run(backend=backend, stream=True)
    chunks = list(state.text_iter())
    assert state.error() is None and state["story"] and "".join(chunks).endswith(state["story"] + "<|im_end|>\n")
    report = explore_report(state, "story")  # streamed: the telemetry rides on the final chunk
    assert report is not None and report["group"].startswith("sgl-") and report["predictions"] > 0


def test_select_choices_and_join_in_an_exploring_program(backend):
    @function
    def pick(s):
        s += user("Suggest a pet name.")
        forks = s.fork(2)
        forks += assistant(gen("name", explore=True, **SAMPLING))
        forks.join()  # gathers the children's "name" into the parent as a list
        names = s["name"]
        s += user("Is the first suggestion good? Answer yes or no.")
        s += assistant(gen("verdict", choices=["yes", "no"]))
        return names

    state = pick.run(backend=backend)
    assert state.error() is None and len(state.ret_value) == 2
    assert state["verdict"] in ("yes", "no")


def test_concatenating_join_works_on_this_endpoint(backend):
    @function
    def combine(s):
        s += "List two colors:\n"
        forks = s.fork(2)
        forks += gen("c", max_tokens=4, explore=True)
        forks.join(mode="concate_and_append")

    state = combine.run(backend=backend)
    assert state.error() is None and len(state.text()) > len("List two colors:\n")


def test_gen_n_samples_share_the_group(backend):
    @function
    def many(s):
        s += user("Name an animal.")
        s += assistant(gen("animal", n=3, explore=True, **SAMPLING))
        return group_of(s)

    state = many.run(backend=backend)
    reports = explore_reports(state, "animal")
    assert len(state["animal"]) == 3 and len(reports) == 3
    assert {r["group"] for r in reports} == {state.ret_value}


def test_sglangs_own_runtime_endpoint_passes_custom_params_too(esamp_server):
    """The pass-through is in sglang.lang itself, so the stock RuntimeEndpoint explores as well."""
    from sglang import RuntimeEndpoint

    stock = RuntimeEndpoint(esamp_server.url, chat_template_name="chatml")

    @function
    def pair(s):
        s += user("Name a tree.")
        forks = s.fork(2)
        forks += assistant(gen("tree", explore=True, **SAMPLING))
        out = [explore_report(f, "tree") for f in forks]
        forks.join()
        return out

    reports = pair.run(backend=stock).ret_value
    assert all(r and r["steps_trained"] > 0 for r in reports) and len({r["group"] for r in reports}) == 1
