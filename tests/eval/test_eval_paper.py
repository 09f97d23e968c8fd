"""Issue 20's evaluation side, without a server: profile and noise arms, one server per profile, pass@k
up to 64 with intervals, the pre-registered contrast list in the JSON, and no extrapolation."""

from __future__ import annotations

import contextlib
import json
import math
import zlib

import numpy as np
import pytest

from esamp_sgl.eval import analysis, paper, passk_curves, servers
from esamp_sgl.eval.arms import BOUNDED_ARM, NOISE_ARM, PAPER_ARM, parse_arm, parse_arms
from esamp_sgl.eval.cli import main as eval_main
from esamp_sgl.eval.metrics import pass_at_k
from esamp_sgl.eval.stories import PROMPT_WORDS, story_first_halves, story_prompts


# -- arms ---------------------------------------------------------------------------------------------
def test_profile_and_noise_arms_say_their_profile_and_send_it():
    p = parse_arm(PAPER_ARM)
    assert (p.kind, p.profile, p.rule, p.beta) == ("esamp", "paper", "contrastive", 0.25)
    assert p.name == "esamp@paper-contrastive-b0.25-T1" and p.needs_profile
    assert p.sampling_params() == {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "custom_params": {
        "esamp": True, "esamp_beta": 0.25, "esamp_rule": "contrastive", "esamp_profile": "paper"}}
    noise = parse_arm(NOISE_ARM)
    assert noise.name == "noise@paper-b0.25-T1"
    custom = noise.sampling_params()["custom_params"]
    assert custom["esamp_rule"] == "noise" and "esamp_train" not in custom  # the Distiller trains: it needs ‖h − ĥ‖
    # bounded is the default profile: old specs keep their names and requests (no esamp_profile key).
    old = parse_arm("esamp:rule=compensated,beta=1,min_p=0.05")
    assert old.profile == "bounded" and old.name == "esamp-compensated-b1-T1-minp0.05"
    assert "esamp_profile" not in old.sampling_params()["custom_params"]
    assert parse_arm(BOUNDED_ARM).name == "esamp-compensated-b1-T1"
    assert parse_arm("esamp:profile=reference,beta=0.8").name == "esamp@reference-contrastive-b0.8-T1"
    assert parse_arm("frozen:profile=paper,beta=1").sampling_params()["custom_params"]["esamp_train"] is False
    # Arms without a filter: vanilla sampling, presence without a filter.
    assert parse_arm("stock:T=1").sampling_params() == {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0}
    assert parse_arm("presence:beta=1").name == "presence-b1-T1"
    for bad, needle in [("esamp:profile=nope,beta=1", "profile must be one of 'paper', 'reference', 'bounded'"),
                        ("stock:T=1,profile=paper", "profile applies to the Distiller kinds"),
                        ("presence:beta=1,profile=paper", "profile applies"), ("noise:T=1", "needs beta"),
                        ("noise:beta=1,rule=compensated", "rule applies to esamp and frozen")]:
        with pytest.raises(ValueError, match=needle):
            parse_arm(bad)
    with pytest.raises(ValueError, match="duplicate"):
        parse_arms("esamp:beta=1;esamp:profile=bounded,beta=1")  # the same arm, spelled twice


def test_paper_preset_and_its_diversity_sweeps():
    names = [a.name for a in parse_arms("paper")]
    assert names == ["stock-T1", "stock-T1-minp0.1", "esamp@paper-contrastive-b0.25-T1", "noise@paper-b0.25-T1",
                     "stock-T0.8", "presence-b1-T1", "esamp-compensated-b1-T1"]
    swept = parse_arms("paper", sweeps=True)
    assert len({a.name for a in swept}) == len(swept) == 17  # 7 + 14 sweep points, 4 of them already in the preset
    families = paper.sweep_families(swept)
    assert families[paper.MATCHED_FAMILY] == [f"stock-T{t:g}" for t in (0.7, 0.8, 0.9, 1.0, 1.15, 1.3)]
    assert families["min-p (stock, T 1, min-p sweep)"][0] == "stock-T1"  # min-p 0 anchors the sweep
    assert families["presence (T 1, no filter, β sweep)"] == ["stock-T1"] + [f"presence-b{b:g}-T1" for b in (0.25, 0.5, 1, 2)]

    # issue 22's arms at the larger model: the paper's baselines, its method and its control, whose
    # registered contrasts (paper − vanilla, − noise, − min-p 0.1) all run
    core = parse_arms("paper-core")
    assert [a.name for a in core] == names[:4]
    runnable = {c.label for c, _, _ in paper._runnable(core, {"results": {}, "notes": []})}
    assert runnable == {"paper − vanilla", "paper − noise control", "paper − min-p 0.1"}


# -- one server per profile ---------------------------------------------------------------------------
def test_one_server_per_profile_stock_and_presence_on_the_first():
    arms = parse_arms("paper")
    plans = servers.plan_servers(arms)
    assert [p.profile for p in plans] == ["paper", "bounded"]
    assert [a.name for a in plans[0].arms] == ["stock-T1", "stock-T1-minp0.1", "esamp@paper-contrastive-b0.25-T1",
                                               "noise@paper-b0.25-T1", "stock-T0.8", "presence-b1-T1"]
    assert [a.name for a in plans[1].arms] == ["esamp-compensated-b1-T1"]
    assert servers.plan_servers(parse_arms("stock:T=1;presence:beta=1")) == [
        servers.ServerPlan(None, parse_arms("stock:T=1;presence:beta=1"))]
    assert servers.server_env("paper", {"A": "1"}) == {"A": "1", "ESAMP_SGL_PROFILE": "paper"}
    assert servers.server_env(None, {"A": "1"}) is None
    with pytest.raises(ValueError, match=r"serves one profile.*paper: esamp@paper.*bounded: esamp-compensated-b1-T1"):
        servers.plan_servers(arms, url="http://127.0.0.1:1")
    assert len(servers.plan_servers(parse_arms(f"{PAPER_ARM};stock:T=1"), url="http://x")) == 1


def test_passk_cli_refuses_url_with_two_profiles_naming_the_arms(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        eval_main(["passk", "--url", "http://127.0.0.1:9", "--arms", "paper", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "esamp-compensated-b1-T1" in err and "esamp@paper" in err


# -- pass@k up to 64 ----------------------------------------------------------------------------------
def _pass_at_k_product(n: int, c: int, k: int) -> float:
    """The numerically stable form of the same estimator (Chen et al. 2021): 1 − Π (1 − k/i), i = n−c+1…n."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@pytest.mark.parametrize("c", [0, 1, 5, 32, 63, 64])
def test_pass_at_k_up_to_64_matches_the_product_form(c):
    for k in range(1, 65):
        assert pass_at_k(64, c, k) == pytest.approx(_pass_at_k_product(64, c, k), abs=1e-12)
    assert pass_at_k(64, c, 1) == pytest.approx(c / 64)
    assert pass_at_k(64, c, 64) == (1.0 if c else 0.0)


def test_pass_at_k_curves_for_every_k_with_intervals():
    correct = [0, 1, 3, 10, 64, 0, 2, 40]
    curve = passk_curves.curve_with_intervals(correct, 64, range(1, 65))
    assert sorted(curve) == list(range(1, 65))
    means = [curve[k]["mean"] for k in range(1, 65)]
    assert means == sorted(means)  # pass@k never falls with k
    assert curve[1]["mean"] == pytest.approx(np.mean(correct) / 64)
    assert curve[64]["mean"] == pytest.approx(6 / 8)  # the tasks with any correct sample
    for k in (1, 16, 64):
        lo, hi = curve[k]["ci95"]
        assert lo <= curve[k]["mean"] <= hi and 0.0 <= lo and hi <= 1.0
    assert passk_curves.curve_with_intervals(correct, 64, [16]) == passk_curves.curve_with_intervals(correct, 64, [16])
    header, rows = passk_curves.table_rows({"a": curve}, 64, {"a": "paper"})
    assert header == ["arm", "profile"] + [f"pass@{k}" for k in (1, 2, 4, 8, 16, 32, 64)]
    assert rows[0][:2] == ["a", "paper"] and rows[0][-1].startswith("0.750 [")


# -- the CLI with a fake server: the contrast list in the JSON, each arm's server and profile ---------
def test_passk_paper_preset_runs_one_server_per_profile_and_writes_the_contrasts(monkeypatch, tmp_path, model_path):
    from esamp_sgl.eval import cli, client

    started: list[str | None] = []

    @contextlib.contextmanager
    def fake_server(args):
        started.append(args.server_profile)
        yield f"http://fake/{args.server_profile}", model_path, {"url": "fake", "profile_env": args.server_profile}

    class FakeClient:
        """Answers "1" (correct for the task below) on a fraction of samples that depends on the arm;
        reports the profile of the server it talks to in the telemetry, as the server will."""

        def __init__(self, url: str) -> None:
            self.profile = url.rsplit("/", 1)[-1]

        def generate(self, prompt_ids, n, max_tokens, params, stop=None):
            custom = params.get("custom_params", {})
            paper_server = custom.get("esamp_profile") == "paper"
            right = {"contrastive": n // 2, "noise": n // 4}.get(custom.get("esamp_rule"), 1) if paper_server else 1
            texts = ["1" if i < right else "7" for i in range(n)]
            telemetry = {"profile": self.profile} if custom else None
            return client.Generation([client.Sample(t, [1], "stop") for t in texts], telemetry)

    monkeypatch.setattr(cli, "_server", fake_server)
    monkeypatch.setattr(client, "ServerClient", FakeClient)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"{i}: 0+1=", "answer": "1"}) + "\n" for i in range(4)))
    out = tmp_path / "pk"
    assert eval_main(["passk", "--task", str(tasks), "--arms", "paper", "--n", "64", "--output", str(out)]) == 0
    assert started == ["paper", "bounded"]
    data = json.loads((out / "passk.json").read_text())
    pre = data["paper_contrasts"]
    assert pre["registered"] == paper.registered() and [c["label"] for c in pre["registered"]] == [
        c.label for c in paper.PREREGISTERED_CONTRASTS]
    assert pre["ks"] == [16, 64] and set(pre["results"]) == {c.label for c in paper.PREREGISTERED_CONTRASTS}
    assert all(set(v) == {"pass@16", "pass@64"} for v in pre["results"].values())
    assert pre["results"]["paper − vanilla"]["pass@16"]["prompts"] == 4
    servers_of = data["arm_servers"]
    assert servers_of["esamp-compensated-b1-T1"]["server_profile"] == "bounded"
    assert servers_of["esamp@paper-contrastive-b0.25-T1"]["telemetry_profiles"] == {"paper": 4}
    assert servers_of["stock-T1"]["server"] == 0 and servers_of["stock-T1"]["arm_profile"] is None
    assert sorted(data["curves"]["stock-T1"], key=int) == [str(k) for k in range(1, 65)]
    md = (out / "passk.md").read_text()
    assert "## pass@k with 95 % intervals" in md and "## Pre-registered contrasts (issue 20)" in md
    assert "paper − noise control, pass@64" in md and (out / "passk_curves.png").exists()


def test_a_profile_mismatch_in_the_telemetry_is_reported():
    arm = parse_arm(PAPER_ARM)
    plans = [servers.ServerPlan("paper", [arm])]
    out, notes = servers.arm_servers(plans, [{arm.name: {"bounded": 2}}])
    assert out[arm.name]["telemetry_profiles"] == {"bounded": 2}
    assert notes and "asked for profile 'paper'" in notes[0] and "'bounded'" in notes[0]


# -- no extrapolation ---------------------------------------------------------------------------------
def _records(points):
    return [{"arm": arm, "prompt": p, "replicate": 0, "nll": nll, "vendi": vendi}
            for arm, per in points.items() for p, (nll, vendi) in enumerate(per)]


def test_an_arm_outside_a_familys_span_gets_no_number():
    # A two-point presence curve through NLL 1.0 and 1.2; an arm at NLL 2.0 is far outside it. Today's
    # analysis extended the curve's slope (+5 Vendi per NLL) to read 5.0 there and a gain of −3.
    points = {"stock-T1": [(1.0, 1.0)] * 4, "presence-b1": [(1.2, 2.0)] * 4, "far": [(2.0, 2.0)] * 4,
              "inside": [(1.1, 2.0)] * 4}
    recs = _records(points)
    far = analysis.matched_gain(recs, "far", ["stock-T1", "presence-b1"])
    assert far["out_of_span"] and math.isnan(far["mean"]) and far["per_prompt"] == {} and far["span"] == [1.0, 1.2]
    inside = analysis.matched_gain(recs, "inside", ["stock-T1", "presence-b1"])
    assert not inside["out_of_span"] and inside["mean"] == pytest.approx(0.5)  # curve 1.5 at NLL 1.1
    assert analysis.curve_at([1.0, 1.2], [1.0, 2.0], 2.0) is None
    assert analysis.curve_at([1.0, 1.2], [1.0, 2.0], 1.2) == pytest.approx(2.0)
    # The contrast never chooses a family that does not span the arm; it says so.
    families = {"presence": ["stock-T1", "presence-b1"], "wide": ["w1", "w2"]}
    recs += _records({"w1": [(0.5, 0.0)] * 4, "w2": [(3.0, 2.5)] * 4})
    c = analysis.matched_contrast(recs, "far", families)
    assert c["strongest_family"] == "wide" and c["families_out_of_span"] == ["presence"]
    assert analysis.matched_contrast(recs, "far", {"presence": families["presence"]}) is None


def test_per_prompt_out_of_span_prompts_give_no_number():
    # The mean curve spans the arm, but on prompt 1 the arm lies beyond that prompt's own points.
    points = {"a": [(1.0, 1.0), (1.0, 1.0)], "b": [(3.0, 3.0), (1.5, 3.0)], "x": [(2.0, 2.5), (2.0, 9.0)]}
    g = analysis.matched_gain(_records(points), "x", ["a", "b"])
    assert g["per_prompt"] == {0: pytest.approx(0.5)} and g["prompts_out_of_span"] == 1 and g["prompts"] == 1


def test_diversity_paper_contrasts_from_raw(monkeypatch, tmp_path):
    from esamp_sgl.eval import embed

    class FakeEmbedder:
        def __call__(self, texts):
            vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=16) for t in texts])
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    monkeypatch.setattr(embed, "SentenceEmbedder", FakeEmbedder)
    arms = parse_arms("paper", sweeps=True)
    nll_of = lambda a: {"stock": a.temperature + 2 * a.min_p, "presence": 1.0 + 0.1 * a.beta}.get(a.kind, 1.05)
    results = [{"arm": a.name, "replicate": 0, "prompt": p, "texts": [f"{a.name} {p} {i}" for i in range(4)],
                "output_ids": [[1, 2, 3, 4]] * 4, "finish": ["stop"] * 4, "sample_nll": [nll_of(a)] * 4,
                "telemetry": None} for a in arms for p in range(3)]
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"model": "fake", "server": {}, "results": results}))
    out = tmp_path / "div"
    assert eval_main(["diversity", "--from-raw", str(raw), "--prompts", "stories", "--limit", "3", "--n", "4",
                      "--arms", "paper", "--output", str(out)]) == 0
    data = json.loads((out / "diversity.json").read_text())
    pre = data["paper_contrasts"]
    assert pre["registered"] == paper.registered() and pre["matched_family"] == paper.MATCHED_FAMILY
    assert set(pre["results"]) == {c.label for c in paper.PREREGISTERED_CONTRASTS}
    vanilla = pre["results"]["paper − vanilla"]
    assert vanilla["preregistered"]["prompts"] == 3 and set(vanilla["raw"]) == {"vendi", "nll", "cos_dist"}
    assert data["config"]["chat"] is False  # stories: plain text, no chat template
    md = (out / "diversity.md").read_text()
    assert "## Vendi at matched perplexity (interpolated only)" in md and "[pre-registered]" in md
    assert "perplexity" in md


def test_story_prompts_are_the_last_32_words_of_each_first_half():
    halves, prompts = story_first_halves(), story_prompts()
    assert len(prompts) == len(halves) == 30
    for half, prompt in zip(halves, prompts):
        assert len(prompt.split()) == PROMPT_WORDS and half["first_half"].endswith(prompt.split()[-1])
    with pytest.raises(ValueError, match="words"):
        story_prompts(0)
