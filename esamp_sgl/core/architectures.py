"""The Distiller's architectures behind one interface.

Each architecture is one module with its forward and its hand-written gradient side by side
(`lowrank.py`, `swiglu.py`), on a padded block of U parameter sets: x [U, n, H] fp32 (the n rows of
entry u in x[u]), parameters p {name: [U, *shape]}. The bank (prediction), the trainer (decode
training and the prefill warm start) and the exact check all call these functions, nothing else.

    forward(x, p) -> y                       [U, n, H]
    forward_saving(x, p) -> (y, saved)        the same, keeping what the gradient needs
    backward(g_y, saved, p, grads)            writes ∂L/∂p into `grads` ({name: [U, *shape]} views)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from esamp_sgl.core import lowrank, swiglu

Shapes = dict[str, tuple[int, ...]]
Forward = Callable[[Tensor, dict[str, Tensor]], Tensor]  # x [U, n, H], p {name: [U, *shape]} -> [U, n, H]


@dataclass(frozen=True)
class Architecture:
    name: str
    shapes: Callable[[int, int, int], Shapes]  # (hidden, width, blocks) -> {name: shape}, in storage order
    init: Callable[[int, int, int, int], dict[str, Tensor]]  # (hidden, width, blocks, seed) -> one set
    forward: Forward
    forward_saving: Callable[[Tensor, dict[str, Tensor]], tuple[Tensor, Any]]
    backward: Callable[[Tensor, Any, dict[str, Tensor], dict[str, Tensor]], None]


ARCHITECTURES: dict[str, Architecture] = {
    "lowrank": Architecture("lowrank", lowrank.shapes, lowrank.init, lowrank.forward,
                            lowrank.forward_saving, lowrank.backward),
    "swiglu": Architecture("swiglu", swiglu.shapes, swiglu.init, swiglu.forward,
                           swiglu.forward_saving, swiglu.backward),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"esamp_distiller must be one of {', '.join(map(repr, ARCHITECTURES))}, got {name!r}")
    return ARCHITECTURES[name]


def param_layout(shapes: Shapes) -> dict[str, tuple[int, tuple[int, ...]]]:
    """{name: (offset, shape)} of one parameter set in its flat fp32 row."""
    out, off = {}, 0
    for k, shape in shapes.items():
        out[k] = (off, shape)
        off += math.prod(shape)
    return out


def split_flat(flat: Tensor, layout: dict[str, tuple[int, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Views of a [N, P] flat block as {name: [N, *shape]} (no copy)."""
    out = {}
    for k, (off, shape) in layout.items():
        size = math.prod(shape)
        out[k] = flat[:, off:off + size].view(flat.shape[0], *shape)
    return out
