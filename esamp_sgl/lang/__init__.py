"""SGLang's frontend language with exploration.

    from esamp_sgl.lang import ESampRuntimeEndpoint, assistant, function, gen, user

    @function
    def brainstorm(s, topic):
        s += user(f"Invent a {topic}.")
        forks = s.fork(8)                       # the 8 children share one ESamp group
        forks += assistant(gen("idea", max_tokens=64, explore=True, beta=1.0))
        forks.join()

    state = brainstorm.run(topic="board game", backend=ESampRuntimeEndpoint("http://127.0.0.1:30000"))

`function` is `sgl.function` that also rejects program arguments named like `run()`'s own keywords
(`n`, `temperature`, `backend`, ...); `gen` is `sgl.gen` plus `explore=` (default True), `beta=`,
`group=`, `rule=`, `custom_params=` (gen.py); group ids follow the fork tree (lineage.py); `ESampRuntimeEndpoint` talks
to a server started with `--sampling-backend esamp`; `open_engine_backend()` runs an in-process
`sglang.Engine` instead (engine_backend.py); `explore_report(state, name)` reads a generation's
ESamp telemetry (reports.py).
Importing this package applies `runtime_patch.frontend` (a generic custom_params pass-through and
fork lineage for `sglang.lang`; idempotent).
"""

from runtime_patch import frontend as _frontend

_frontend.apply()

from sglang.lang.api import (  # noqa: E402  (after the patch, like every sglang.lang use here)
    assistant,
    assistant_begin,
    assistant_end,
    select,
    set_default_backend,
    system,
    system_begin,
    system_end,
    user,
    user_begin,
    user_end,
)

from esamp_sgl.lang.endpoint import ESampRuntimeEndpoint  # noqa: E402
from esamp_sgl.lang.engine_backend import EngineBackend, open_engine_backend  # noqa: E402
from esamp_sgl.lang.function import function  # noqa: E402
from esamp_sgl.lang.gen import ExploreParams, gen  # noqa: E402
from esamp_sgl.lang.lineage import fork, group_of, set_group  # noqa: E402
from esamp_sgl.lang.reports import explore_report, explore_reports, report_from_meta_info  # noqa: E402

__all__ = [
    "ESampRuntimeEndpoint", "EngineBackend", "ExploreParams", "assistant", "assistant_begin", "assistant_end",
    "explore_report", "explore_reports", "fork", "function", "gen", "group_of",
    "open_engine_backend", "report_from_meta_info", "select", "set_default_backend", "set_group", "system",
    "system_begin", "system_end", "user", "user_begin", "user_end",
]
