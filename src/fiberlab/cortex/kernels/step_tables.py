"""Tables made from a cell's parameters for its one-step (acting) path, kept while the parameters
are unchanged.

Why: a cell's step may need weights rearranged (S: one block matrix per head; X: the key
projection and position terms moved to the query side). Rebuilding them costs a sizeable part of
an acting step, yet they change only when the parameters do.

When a table is reused: only while autograd records nothing (a table built under autograd must
carry the graph), and only while every parameter it came from is the same object, on the same
storage, at the same version counter. Optimizer steps, ``load_state_dict``, ``nn.init`` and any
in-place write under ``torch.no_grad()`` bump that counter. A write through ``.data`` does not:
PyTorch hides it from the counter. After ``p.data.copy_(...)`` call :meth:`StepTables.clear`.
Nothing in fiberlab writes through ``.data``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class StepTables:
    """One cached value per module: ``tables.get(params, build, extra)`` returns ``build()``, reused
    as the module docstring says (``extra``: anything else the value depends on, e.g. dtype and device)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Any = None

    def get(self, params: Sequence[torch.Tensor], build: Callable[[], Any], extra: tuple = ()) -> Any:
        if torch.is_grad_enabled():
            return build()
        key = tuple((id(p), p.data_ptr(), p._version) for p in params) + tuple(extra)
        if self._key != key:
            self._value, self._key = build(), key
        return self._value

    def clear(self) -> None:
        """Forget the cached value (after a write through ``.data``, which no version counter sees)."""
        self._key = self._value = None
