"""Which server runs which arm: one server per profile, one after the other.

A server runs one profile, chosen when it starts (`ESAMP_SGL_PROFILE=<name>`). Arms of the Distiller
kinds (arms.PROFILE_KINDS) must run on a server of their own profile; the others (stock, tat,
presence, frequency) need no Distiller and run on the first server. Within one server the
evaluations keep their interleaving of arms. With `--url` (a server the harness does not start) only
one profile can be served: `plan_servers` refuses more, naming the arms.

`ProfileRecorder` wraps the client and notes, per request's sampling parameters, the profile the
server's telemetry reported (`meta_info.esamp.profile`), so each arm's record says which profile
actually ran it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, NamedTuple, Sequence

from esamp_sgl.eval.arms import Arm

PROFILE_ENV = "ESAMP_SGL_PROFILE"


class ServerPlan(NamedTuple):
    """One server: the profile it is started with (None: the server's default, for arms that need
    none) and the arms it runs."""
    profile: str | None
    arms: list[Arm]


def plan_servers(arms: Sequence[Arm], url: str | None = None) -> list[ServerPlan]:
    """The servers to run, in order: one per profile the Distiller arms need (in order of first
    appearance), the arms without a Distiller on the first. ValueError with `url` and several
    profiles (a running server serves one), naming the arms of each profile."""
    by_profile: dict[str, list[Arm]] = {}
    for arm in arms:
        if arm.needs_profile:
            by_profile.setdefault(arm.profile, []).append(arm)
    if url and len(by_profile) > 1:
        listed = "; ".join(f"{p}: {', '.join(a.name for a in group)}" for p, group in by_profile.items())
        raise ValueError(f"--url names one running server, which serves one profile, but the arms need "
                         f"{len(by_profile)} ({listed}); drop --url to let the evaluation start one server "
                         f"per profile, or run the arms of each profile separately")
    free = [a for a in arms if not a.needs_profile]
    if not by_profile:
        return [ServerPlan(None, list(arms))]
    plans = [ServerPlan(p, group) for p, group in by_profile.items()]
    first = plans[0]
    # Keep the arms' own order on the first server (the interleaving rotates over it).
    plans[0] = ServerPlan(first.profile, [a for a in arms if a in free or a in first.arms])
    return plans


def server_env(profile: str | None, base: dict[str, str]) -> dict[str, str] | None:
    """The environment a server of `profile` starts with (None: unchanged)."""
    return None if profile is None else {**base, PROFILE_ENV: profile}


def params_key(params: dict[str, Any]) -> str:
    """A request's sampling parameters as a key (an arm's `sampling_params()` identifies the arm)."""
    return json.dumps(params, sort_keys=True)


class ProfileRecorder:
    """A ServerClient (or stand-in) that counts the telemetry profiles each arm's requests reported."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.profiles: dict[str, Counter] = {}
        self.settings: dict[str, Any] = {}  # {profile: the resolved settings its telemetry reported first}

    def generate(self, prompt_ids: Sequence[int], n: int, max_tokens: int, params: dict[str, Any],
                 stop: Sequence[str] | None = None) -> Any:
        gen = self.client.generate(prompt_ids, n, max_tokens, params, stop=stop)
        profile = (gen.telemetry or {}).get("profile")
        if profile is not None:
            self.profiles.setdefault(params_key(params), Counter())[str(profile)] += 1
            self.settings.setdefault(str(profile), (gen.telemetry or {}).get("settings"))
        return gen

    def __getattr__(self, name: str) -> Any:  # nll() and anything else: the wrapped client's
        return getattr(self.client, name)

    def telemetry_profiles(self, arms: Sequence[Arm]) -> dict[str, dict[str, int]]:
        """{arm name: {telemetry profile: requests}} (empty for arms without telemetry: stock)."""
        return {a.name: dict(self.profiles.get(params_key(a.sampling_params()), {})) for a in arms}


def arm_servers(plans: Sequence[ServerPlan],
                seen: Sequence[dict[str, dict[str, int]]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per arm: the server that ran it (the index of its plan; the evaluation's server infos, in the
    same order, hold each one's `telemetry_settings`, the resolved settings it reported), the profile
    that server was started with, and the profiles the arm's telemetry reported; and notes for every
    arm whose telemetry reported another profile than the one it asked for (a `--url` server of
    another profile, or a server ignoring ESAMP_SGL_PROFILE)."""
    out: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for index, (plan, profiles) in enumerate(zip(plans, seen)):
        for arm in plan.arms:
            reported = profiles.get(arm.name, {})
            out[arm.name] = {"server": index, "server_profile": plan.profile,
                             "arm_profile": arm.profile if arm.needs_profile else None,
                             "telemetry_profiles": reported}
            wrong = sorted(set(reported) - {arm.profile}) if arm.needs_profile else []
            if wrong:
                notes.append(f"{arm.name} asked for profile {arm.profile!r} but the server's telemetry "
                             f"reported {', '.join(map(repr, wrong))}")
    return out, notes


def merge_passk(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One passk.run result from the runs of several servers (disjoint arms): their per-task rows and
    summaries together; the greedy reference of the first server (each server's kept in
    `greedy_accuracy_per_server`: the same model, so they should agree)."""
    first = parts[0]
    merged = {**first, "summary": {}, "per_task": {},
              "greedy_accuracy_per_server": [p["greedy_accuracy"] for p in parts]}
    for part in parts:
        merged["summary"].update(part["summary"])
        merged["per_task"].update({k: v for k, v in part["per_task"].items() if k != "greedy"})
    merged["per_task"]["greedy"] = first["per_task"]["greedy"]
    return merged
