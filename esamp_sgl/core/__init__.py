"""Engine-agnostic core: torch only (tests/core/test_layers.py enforces it)."""
