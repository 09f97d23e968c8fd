"""Micro-benchmarks of the engine-agnostic core (no engine, no model)."""
