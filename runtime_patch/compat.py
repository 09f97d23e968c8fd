"""The SGLang symbols esamp-sgl touches, checked at plugin load (docs/touch-points.md has one row each).

The symbols are the targets of the touch-point table (`runtime_patch.touch_points`), plus the one the
sgl_kernel stand-in mirrors (`cpu_compat`, which is imported at interpreter start-up and keeps its own
list).
"""

from __future__ import annotations

import pkgutil

from runtime_patch.cpu_compat import TOUCH_POINTS as _STANDIN_TOUCH_POINTS
from runtime_patch.touch_points import TOUCH_POINTS as _TABLE

SUPPORTED_SGLANG = "0.5.23"

# dotted path -> why we need it (docs/touch-points.md says what breaks if it changes)
TOUCH_POINTS: dict[str, str] = {**{point.target: point.why for point in _TABLE}, **_STANDIN_TOUCH_POINTS}


class IncompatibleSGLang(RuntimeError):
    pass


def self_check() -> None:
    """Fail with a message naming the missing symbol and the supported SGLang version."""
    import sglang

    version = getattr(sglang, "__version__", "unknown")
    missing = []
    for dotted in TOUCH_POINTS:
        try:
            pkgutil.resolve_name(dotted)  # what HookRegistry.apply_hooks resolves targets with
        except (ImportError, AttributeError):
            missing.append(dotted)
    if missing:
        raise IncompatibleSGLang(
            f"esamp-sgl supports sglang=={SUPPORTED_SGLANG}; the installed sglang {version} lacks "
            + ", ".join(missing)
        )
