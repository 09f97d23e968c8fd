"""The pre-registered contrast on synthetic numbers whose answer is known by construction."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest

from esamp_sgl.eval import analysis, diversity, passk, report
from esamp_sgl.eval.arms import PRIMARY_ARM, parse_arm, parse_arms
from esamp_sgl.eval.cli import _preregistered_lines, main as eval_main

T975_DF5 = 2.5705818366147395  # Student t, 97.5 % quantile, 5 degrees of freedom
T975_DF3 = 3.182446305284263
NOISE = (0.1, -0.1, 0.2, -0.2, 0.3, -0.3)  # sums to 0: the mean gain stays exactly +1


def _records(points: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """points: {arm: [(nll, vendi) per prompt]} -> one record per (arm, prompt)."""
    return [{"arm": arm, "prompt": p, "replicate": 0, "nll": nll, "vendi": vendi}
            for arm, per in points.items() for p, (nll, vendi) in enumerate(per)]


def _curves(prompts: int = 6) -> dict[str, list[tuple[float, float]]]:
    """Three baseline families, each a line through NLL 1 and 3: stock vendi = nll, tat = nll + 0.5
    (the strongest), presence = nll − 1; "lonely" is a family with one arm (no curve)."""
    line = lambda offset: [[(1.0, 1.0 + offset)] * prompts, [(3.0, 3.0 + offset)] * prompts]
    (s1, s2), (t1, t2), (p1, p2) = line(0.0), line(0.5), line(-1.0)
    return {"s1": s1, "s2": s2, "t1": t1, "t2": t2, "p1": p1, "p2": p2, "lonely": [(2.0, 9.0)] * prompts}


FAMILIES = {"stock": ["s1", "s2"], "tat": ["t1", "t2"], "presence": ["p1", "p2"], "lonely": ["lonely"]}


def test_primary_gain_is_plus_one_against_the_strongest_family_with_t_interval():
    # At NLL 2 the tat curve is 2.5; the arm's Vendi is 3.5 + noise: gain +1 + noise on every prompt.
    points = {**_curves(), "x": [(2.0, 3.5 + e) for e in NOISE]}
    c = analysis.matched_contrast(_records(points), "x", FAMILIES)
    assert c["strongest_family"] == "tat" and c["families_without_curve"] == ["lonely"]
    curves = {f: v["mean_at_matched_quality"] for f, v in c["families"].items()}
    assert curves == pytest.approx({"stock": 2.0, "tat": 2.5, "presence": 1.0})
    assert c["families"]["presence"]["mean_gain"] == pytest.approx(2.5)
    sem = np.std(NOISE, ddof=1) / math.sqrt(len(NOISE))
    assert c["mean"] == pytest.approx(1.0) and c["sem"] == pytest.approx(sem)
    assert c["ci95_t"] == pytest.approx([1 - T975_DF5 * sem, 1 + T975_DF5 * sem])
    assert c["t"] == pytest.approx(1 / sem) and c["p"] == pytest.approx(1.4485e-4, rel=1e-3)
    assert c["win_rate"] == 1.0 and c["prompts"] == 6
    lo, hi = c["ci95_bootstrap"]
    assert 1 - 0.3 <= lo < 1 < hi <= 1 + 0.3  # inside the range of the data
    assert analysis.matched_contrast(_records(points), "x", FAMILIES)["ci95_bootstrap"] == [lo, hi]  # fixed seed


def test_exactly_constant_gain_gives_a_point_interval():
    points = {**_curves(), "x": [(2.0, 3.5)] * 6}
    c = analysis.matched_contrast(_records(points), "x", FAMILIES)
    assert c["per_prompt"] == {p: pytest.approx(1.0) for p in range(6)}
    assert c["ci95_t"] == c["ci95_bootstrap"] == [pytest.approx(1.0)] * 2
    assert math.isnan(c["t"]) and math.isnan(c["p"])


def test_control_contrast_is_a_difference_of_gains_against_the_same_curve():
    # The control sits at NLL 1 (tat curve 1.5) with Vendi 1.75: gain +0.25; x − control = 0.75 + noise.
    points = {**_curves(), "x": [(2.0, 3.5 + e) for e in NOISE], "ctl": [(1.0, 1.75)] * 6}
    c = analysis.matched_contrast(_records(points), "x", FAMILIES, other="ctl")
    assert c["strongest_family"] == "tat" and c["other"] == "ctl"
    assert c["mean"] == pytest.approx(0.75) and c["win_rate"] == 1.0
    assert analysis.matched_contrast(_records(points), "x", FAMILIES, other="absent") is None
    assert analysis.matched_contrast(_records(points), "x", {"lonely": ["lonely"]}) is None


def test_contrast_stats_small_samples():
    one = analysis.contrast_stats([0.5])
    assert one["mean"] == 0.5 and all(math.isnan(x) for x in one["ci95_t"] + one["ci95_bootstrap"] + [one["p"]])
    diffs = [1.0, 2.0, 3.0, 4.0]
    s = analysis.contrast_stats(diffs)
    sem = np.std(diffs, ddof=1) / 2
    assert s["ci95_t"] == pytest.approx([2.5 - T975_DF3 * sem, 2.5 + T975_DF3 * sem])
    assert analysis.paired_contrast({0: 1.0, 1: 2.0}, {1: 0.5, 2: 9.0})["per_prompt"] == {1: 1.5}
    assert analysis.paired_contrast({0: 1.0}, {1: 1.0}) is None


def _diversity_points() -> dict[str, list[tuple[float, float]]]:
    """The diversity preset's arms on 6 prompts: baselines on the lines of `_curves`, ESamp above."""
    T = lambda t: [(t, t)] * 6  # stock: vendi = nll
    points = {f"stock-T{t:g}-minp0.05": T(t) for t in (0.7, 1.0, 1.3, 1.6)}
    points |= {f"tat-Tp{tp:g}-T1-minp0.05": [(tp, tp + 0.5)] * 6 for tp in (1.5, 2.0, 3.0)}
    points |= {f"presence-b{b:g}-T1-minp0.05": [(1 + b, b)] * 6 for b in (1, 3)}
    points |= {"esamp-compensated-b1-T1-minp0.05": [(2.0, 3.5 + e) for e in NOISE],
               "esamp-compensated-b3-T1-minp0.05": [(2.0, 4.0)] * 6,
               "frozen-compensated-b3-T1-minp0.05": [(2.0, 3.0)] * 6,
               "random-b3-T1-minp0.05": [(2.0, 2.75)] * 6}
    return points


def test_diversity_preregistered_section_uses_the_preset_families():
    arms = parse_arms("diversity")
    assert {a.name for a in arms} == set(_diversity_points())
    pre = diversity.preregistered(_records(_diversity_points()), arms, parse_arm(PRIMARY_ARM))
    assert set(pre["baseline_families"]) == {"stock, min-p 0.05 (T sweep)", "tat, min-p 0.05, T 1 (Tp sweep)",
                                             "presence, min-p 0.05, T 1 (β sweep)"}
    # A strength sweep starts at strength 0 = stock at the same T and filters: its first point.
    for family in ("tat, min-p 0.05, T 1 (Tp sweep)", "presence, min-p 0.05, T 1 (β sweep)"):
        assert pre["baseline_families"][family][0] == "stock-T1-minp0.05"
    assert "stock-T1-minp0.05" in pre["baseline_families"]["stock, min-p 0.05 (T sweep)"]
    primary = pre["primary"]
    assert primary["arm"] == "esamp-compensated-b1-T1-minp0.05" and primary["mean"] == pytest.approx(1.0)
    assert primary["strongest_family"] == "tat, min-p 0.05, T 1 (Tp sweep)"
    secondary = {label.split("(")[-1]: c for label, c in pre["secondary"].items()}
    assert secondary["test-time training)"]["mean"] == pytest.approx(1.0)  # 4.0 − 3.0 at the same NLL
    assert secondary["the Distiller's d vs a random prior)"]["mean"] == pytest.approx(1.25)
    assert pre["notes"] == []
    text = "\n".join(_preregistered_lines(pre))
    assert "## Pre-registered contrast" in text and "← strongest" in text and "+1.000" in text
    missing = diversity.preregistered(_records(_diversity_points()), arms, parse_arm("esamp:beta=2,min_p=0.05"))
    assert missing["primary"] is None and "not among the arms" in missing["notes"][0]


def test_passk_do_no_harm_contrast():
    primary, stock = parse_arm(PRIMARY_ARM), parse_arm("stock:T=1,min_p=0.05")
    rows = lambda correct, distinct: {t: {"correct": c, "distinct_answers": d}
                                      for t, (c, d) in enumerate(zip(correct, distinct))}
    result = {"ks": [1, 2, 4, 8, 16], "per_task": {primary.name: rows([0, 3, 0, 5], [5, 6, 7, 8]),
                                                   stock.name: rows([1, 2, 0, 0], [4, 4, 4, 4])}}
    pre = passk.preregistered(result, [stock, primary], primary, n=16)
    assert pre["k"] == 16 and pre["baseline_arm"] == "stock-T1-minp0.05"
    assert pre["pass_at_k"]["per_prompt"] == {0: -1.0, 1: 0.0, 2: 0.0, 3: 1.0}  # pass@16 is 1 iff c > 0
    d = pre["distinct_answers"]
    sem = np.std([1, 2, 3, 4], ddof=1) / 2
    assert d["mean"] == 2.5 and d["ci95_t"] == pytest.approx([2.5 - T975_DF3 * sem, 2.5 + T975_DF3 * sem])
    assert passk.preregistered(result, [stock, primary], primary, n=8)["k"] == 8
    absent = passk.preregistered(result, [primary], primary, n=16)
    assert absent["pass_at_k"] is None and "stock-T1-minp0.05" in absent["notes"][0]


def test_contrast_row_formats_and_marks_missing():
    row = report.contrast_row("c", analysis.contrast_stats([1.0, 2.0, 3.0, 4.0]))
    assert row[0] == "c" and row[1] == "+2.500" and row[-1] == "4" and row[-2] == "100%"
    assert report.contrast_row("c", None)[1] == "n/a"
    assert len(report.contrast_row("c", None)) == len(report.CONTRAST_HEADER)


@pytest.mark.parametrize("args,needle", [
    (["--task", "nope"], "--task must be one of 'arithmetic', 'worked'"),
    (["--task", "worked", "--max-tokens", "16"], "--max-tokens must be in [32, 4096] for --task worked"),
    (["--primary", "esamp:beta=2"], "--primary esamp-contrastive-b2-T1 must be one of --arms"),
    (["--primary", "tat:Tp=0.5"], "--primary: arm 'tat:Tp=0.5': Tp must be in"),
])
def test_passk_cli_rejects_bad_arguments_before_any_server(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        eval_main(["passk", "--url", "http://127.0.0.1:9", "--output", str(tmp_path)] + args)
    assert exc.value.code == 2 and needle in capsys.readouterr().err


# -- the CLI end to end, with the server and the embedder replaced by fakes --------------------------
def test_passk_worked_cli_reports_the_do_no_harm_contrast(monkeypatch, tmp_path, model_path):
    from esamp_sgl.eval import cli, client

    seen: list[dict] = []

    @contextlib.contextmanager
    def fake_server(args):
        yield "http://fake", model_path, {"url": "http://fake"}

    class FakeClient:
        """ESamp answers 0..n-1 (16 distinct answers), stock always 1 (one)."""

        def __init__(self, url: str) -> None:
            pass

        def generate(self, prompt_ids, n, max_tokens, params, stop=None):
            seen.append({"prompt_ids": list(prompt_ids), "max_tokens": max_tokens, "stop": stop})
            esamp = "custom_params" in params
            texts = [f"2 + 3 = 5.\nAnswer: {i if esamp else 1}" for i in range(n)]
            return client.Generation([client.Sample(t, [1, 2], "stop") for t in texts], None)

    monkeypatch.setattr(cli, "_server", fake_server)
    monkeypatch.setattr(client, "ServerClient", FakeClient)
    out = tmp_path / "pk"
    assert eval_main(["passk", "--task", "worked", "--count", "3", "--arms",
                      "stock:T=1,min_p=0.05;esamp:rule=compensated,beta=1,min_p=0.05", "--output", str(out)]) == 0
    assert all(s["max_tokens"] == 64 and s["stop"] is None for s in seen)  # the worked task's defaults
    from transformers import AutoTokenizer

    im_start = AutoTokenizer.from_pretrained(model_path).convert_tokens_to_ids("<|im_start|>")
    assert all(s["prompt_ids"][0] == im_start for s in seen)  # chat template on by default
    data = json.loads((out / "passk.json").read_text())
    pre = data["preregistered"]
    assert (pre["k"], pre["primary_arm"], pre["baseline_arm"]) == (16, "esamp-compensated-b1-T1-minp0.05",
                                                                   "stock-T1-minp0.05")
    assert pre["distinct_answers"]["mean"] == 15.0 and pre["distinct_answers"]["ci95_t"] == [15.0, 15.0]
    assert pre["distinct_answers"]["prompts"] == 3 and data["config"]["chat"] is True
    assert "## Pre-registered contrast" in (out / "passk.md").read_text()


def test_diversity_cli_from_raw_reports_the_preregistered_contrast(monkeypatch, tmp_path):
    import zlib

    from esamp_sgl.eval import embed

    class FakeEmbedder:
        """A fixed random unit vector per text (same text, same vector)."""

        def __call__(self, texts):
            vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=16) for t in texts])
            return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    monkeypatch.setattr(embed, "SentenceEmbedder", FakeEmbedder)
    points = _diversity_points()
    results = [{"arm": arm, "replicate": 0, "prompt": p,
                "texts": [f"{arm} {p} {i % (1 + int(vendi))}" for i in range(4)],  # more distinct: higher Vendi
                "output_ids": [[1, 2, 3, 4]] * 4, "finish": ["stop"] * 4, "sample_nll": [nll] * 4, "telemetry": None}
               for arm, per in points.items() for p, (nll, vendi) in enumerate(per[:3])]
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps({"model": "fake", "server": {}, "results": results}))
    out = tmp_path / "div"
    assert eval_main(["diversity", "--from-raw", str(raw), "--limit", "3", "--n", "4", "--output", str(out)]) == 0
    pre = json.loads((out / "diversity.json").read_text())["preregistered"]
    assert pre["primary_arm"] == "esamp-compensated-b1-T1-minp0.05" and pre["primary"]["prompts"] == 3
    assert {"mean", "ci95_t", "ci95_bootstrap", "t", "p", "win_rate", "prompts", "strongest_family",
            "families", "per_prompt"} <= set(pre["primary"])
    assert len(pre["secondary"]) == 2 and all(v is not None for v in pre["secondary"].values())
    md = (out / "diversity.md").read_text()
    assert "## Pre-registered contrast" in md and "random prior" in md


def test_matched_gain_does_not_extend_a_prompt_curve_past_its_points():
    # The family's mean curve spans NLL [1, 2.05]; the arm at NLL 0.5 lies below it: no number at all
    # (extended, prompt 1's own two points, close in NLL and far in Vendi, would have read -19 there).
    points = {"a": [(1.0, 1.0), (1.0, 1.0)], "b": [(3.0, 3.0), (1.1, 3.0)], "arm": [(0.5, 1.5), (0.5, 1.5)]}
    gain = analysis.matched_gain(_records(points), "arm", ["a", "b"])
    assert gain["out_of_span"] and gain["per_prompt"] == {} and math.isnan(gain["mean"])
    assert gain["span"] == [pytest.approx(1.0), pytest.approx(2.05)]
