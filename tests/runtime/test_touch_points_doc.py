"""docs/touch-points.md has a row for every SGLang symbol the plugin checks at load."""

from pathlib import Path

from runtime_patch.compat import TOUCH_POINTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "touch-points.md"


def test_every_touch_point_is_documented():
    text = DOC.read_text()
    missing = [k for k in TOUCH_POINTS if ".".join(k.split(".")[-2:]) not in text]
    assert not missing, f"docs/touch-points.md lacks {missing}"
