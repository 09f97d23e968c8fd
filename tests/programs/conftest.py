"""End any frontend executor a test left running (see tests/frontend_cleanup.py for why)."""

from tests.frontend_cleanup import end_leftover_executors  # noqa: F401  (autouse)
