"""Group ids of explore=True generations: fork groups, nested forks, pins; what reaches /generate."""

from __future__ import annotations

import pytest

from esamp_sgl.lang import assistant, fork, function, gen, group_of, set_group, user
from esamp_sgl.lang.lineage import GROUP_PREFIX, compact_group_id


def _groups(backend) -> list[str | None]:
    return [(p or {}).get("esamp_group") for p in backend.custom_params()]


def test_fork4_children_share_one_group_and_without_explore_nothing_is_sent(recording_backend):
    @function
    def program(s):
        s += user("Q")
        forks = s.fork(4)
        forks += assistant(gen("a", max_tokens=4, explore=True, beta=0.7))
        forks += gen("plain", max_tokens=4, explore=False)
        child_groups = [group_of(f) for f in forks]
        forks.join()
        return group_of(s), child_groups

    root, child_groups = program.run(backend=recording_backend).ret_value
    params = recording_backend.custom_params()
    exploring = [p for p in params if p]
    assert len(exploring) == 4 and params.count(None) == 4
    assert {p["esamp_group"] for p in exploring} == {f"{root}/0"} == set(child_groups)
    assert all(p["esamp"] is True and p["esamp_beta"] == 0.7 and "esamp_rule" not in p for p in exploring)
    assert root.startswith(GROUP_PREFIX)


def test_nested_forks_split_by_default_and_can_share_or_pin(recording_backend):
    @function
    def program(s):
        s += "Q"
        top = s.fork(2)
        split = [top[0].fork(2), top[1].fork(2)]  # default: each its own group
        shared = fork(top[0], 2, group="share")  # the parent's group (= top's fork group)
        pinned = fork(top[1], 2, group="pinned-id")
        for children, name in ((split[0], "s0"), (split[1], "s1"), (shared, "sh"), (pinned, "pi")):
            children += gen(name, explore=True)
        top += gen("top", explore=True)
        for state in [*top, *split[0], *split[1], *shared, *pinned]:
            state.sync()
        return group_of(s), [group_of(t) for t in top], [[group_of(c) for c in g] for g in split], \
            [group_of(c) for c in shared], [group_of(c) for c in pinned]

    root, top, split, shared, pinned = program.run(backend=recording_backend).ret_value
    assert set(top) == {f"{root}/0"}
    assert set(split[0]) == {f"{root}/0.0/0"} and set(split[1]) == {f"{root}/0.1/0"}
    assert set(shared) == {f"{root}/0"}  # one Distiller with the parent and its sibling
    assert set(pinned) == {"pinned-id"}
    sent = _groups(recording_backend)
    assert sent.count(f"{root}/0") == 4 and sent.count("pinned-id") == 2
    assert sent.count(f"{root}/0.0/0") == 2 and sent.count(f"{root}/0.1/0") == 2


def test_each_fork_call_gets_its_own_group_and_gen_group_overrides(recording_backend):
    @function
    def program(s):
        s += "Q"
        s += gen("root", explore=True)
        first = s.fork(2)
        first += gen("x", explore=True)
        first.join()
        second = s.fork(2)
        second += gen("y", explore=True)
        second += gen("z", explore=True, group="explicit")
        second.join()
        return group_of(s)

    root = program.run(backend=recording_backend).ret_value
    expected = [root] + [f"{root}/0"] * 2 + [f"{root}/1"] * 2 + ["explicit"] * 2
    assert sorted(_groups(recording_backend)) == sorted(expected)


def test_set_group_pins_the_root_and_forks_derive_from_it(recording_backend):
    @function
    def program(s):
        set_group(s, "run-42")
        s += "Q"
        s += gen("a", explore=True)
        forks = s.fork(2)
        forks += gen("b", explore=True)
        forks.join()

    program.run(backend=recording_backend).sync()
    assert sorted(_groups(recording_backend)) == ["run-42", "run-42/0", "run-42/0"]
    with pytest.raises(ValueError, match="set_group"):
        set_group(program.run(backend=recording_backend), "")


def test_fork_helper_validates_its_arguments(recording_backend):
    @function
    def program(s, size, group):
        s += "Q"
        fork(s, size, group=group)

    with pytest.raises(ValueError, match="fork size"):
        program.run(size=0, group="split", backend=recording_backend)
    with pytest.raises(ValueError, match="fork"):
        program.run(size=2, group="", backend=recording_backend)


def test_run_batch_gives_each_program_its_own_group(recording_backend):
    @function
    def program(s, q):
        s += user(q)
        s += assistant(gen("a", max_tokens=4, explore=True))
        return group_of(s)

    states = program.run_batch([{"q": f"question {i}"} for i in range(3)], backend=recording_backend, num_threads=3)
    groups = [st.ret_value for st in states]
    assert len(set(groups)) == 3
    assert sorted(_groups(recording_backend)) == sorted(groups)


def test_streaming_sends_custom_params_too(recording_backend):
    @function
    def program(s):
        s += "Q"
        s += gen("a", max_tokens=4, explore=True, beta=1.5)

    state = program.run(backend=recording_backend, stream=True)
    state.sync()
    assert state["a"] == "streamed"  # the chunks were cumulative text
    (body,) = recording_backend.generations
    assert body["stream"] is True and body["sampling_params"]["custom_params"]["esamp_beta"] == 1.5


def test_gen_n_returns_all_samples(recording_backend):
    @function
    def program(s):
        s += "Q"
        s += gen("a", max_tokens=4, n=3, explore=True)

    state = program.run(backend=recording_backend)
    assert state["a"] == ["out0", "out1", "out2"]
    assert state.text().endswith("out0")


def test_long_lineages_are_shortened_deterministically():
    raw = "sgl-" + "/0.1" * 60
    short = compact_group_id(raw)
    assert len(short) <= 128 and short == compact_group_id(raw) and short != compact_group_id(raw + "/0")
    assert compact_group_id("short") == "short"


def test_deep_nested_forks_stay_valid_group_ids(recording_backend):
    @function
    def program(s):
        s += "Q"
        state = s
        for _ in range(40):
            state = state.fork(1)[0]
        state += gen("deep", explore=True)
        state.sync()
        return group_of(state)

    group = program.run(backend=recording_backend).ret_value
    assert len(group) <= 128 and _groups(recording_backend) == [group]
