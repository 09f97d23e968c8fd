"""The README's main job: `esamp-sgl demo` runs both arms in one embedded engine and reports them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_json_has_both_arms_with_n_samples_and_metrics(model_path, tmp_path):
    report_path = tmp_path / "demo.json"
    proc = subprocess.run(
        [sys.executable, "-m", "esamp_sgl", "demo", "--n", "3", "--max-tokens", "12", "--prompt", "Name a color.",
         "--model-path", str(model_path), "--json", str(report_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The engine's shutdown used to kill multiprocessing's resource tracker under tqdm's semaphore.
    assert "Traceback" not in proc.stderr and "resource_tracker" not in proc.stderr, proc.stderr[-3000:]
    assert "stock" in proc.stdout and "esamp" in proc.stdout and "distinct-2" in proc.stdout
    report = json.loads(report_path.read_text())
    (entry,) = report["prompts"]
    for arm in ("stock", "esamp"):
        assert len(entry[arm]["samples"]) == 3
        metrics = entry[arm]["metrics"]
        assert set(metrics) == {"distinct_1", "distinct_2", "distinct_3", "mean_nll"}
        assert 0 < metrics["mean_nll"] < 20 and math.isfinite(metrics["mean_nll"])
    assert entry["stock"]["telemetry"] is None
    telemetry = entry["esamp"]["telemetry"]
    # The ESamp arm sees the whole prompt (not left cached by the stock arm), warm-starts on it, and steers.
    assert telemetry["warm_start_positions"] > 0 and telemetry["warm_start_steps"] > 0
    assert telemetry["steps_trained"] > 0 and telemetry["tokens_reweighted"] > 0
