"""Server-wide ESamp defaults, read once per process from the environment.

* `ESAMP_SGL_CONFIG=/path/to/esamp.json`: a JSON object of `ESampConfig` fields, e.g.
  `{"beta": 0.5, "rule": "compensated", "max_groups": 128}`.
* `ESAMP_SGL_<FIELD>` (upper case, e.g. `ESAMP_SGL_BETA=0.8`, `ESAMP_SGL_SOURCE_LAYER=4`): one field;
  wins over the file.

Everything is validated by `ESampConfig`; a bad value stops the server at start-up with a message
naming the field and its allowed range. Requests override `beta` and `rule` per request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from esamp_sgl.core.config import ESampConfig

CONFIG_FILE_ENV = "ESAMP_SGL_CONFIG"
FIELD_ENV_PREFIX = "ESAMP_SGL_"


def load_server_config(environ: Mapping[str, str] | None = None) -> ESampConfig:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    if env.get(CONFIG_FILE_ENV):
        path = Path(env[CONFIG_FILE_ENV])
        try:
            loaded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{CONFIG_FILE_ENV}={path}: cannot read a JSON object ({exc})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{CONFIG_FILE_ENV}={path}: expected a JSON object of ESamp settings")
        values.update(loaded)
    for field in ESampConfig.model_fields:
        key = FIELD_ENV_PREFIX + field.upper()
        if key in env:
            values[field] = env[key]  # strings: ESampConfig parses numbers and booleans
    return ESampConfig(**values)
