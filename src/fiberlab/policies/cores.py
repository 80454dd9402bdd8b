"""Recurrent cores: swappable memory modules with a dict state.

Every core shares the interface of ``fiberlab.cortex`` (``forward(x, state=None, *, resets=None) ->
(y, new_state)``, ``x`` ``[B, H]`` or ``[B, T, H]``, ``state`` a dict of ``[B, ...]`` tensors,
``resets`` a bool ``[B]`` / ``[B, T]`` mask meaning "an episode starts at this step: zero the state
before it"), so a cortex stack can stand where the LSTM stands.
"""
from __future__ import annotations

from fiberlab.cortex.base import State
from fiberlab.cortex.cells.lstm import ResetLSTM

__all__ = ["CORES", "LSTMCore", "State"]


class LSTMCore(ResetLSTM):
    """The policies' LSTM core: ``cortex.cells.lstm.ResetLSTM`` with ``input_size != hidden_size``.

    Why a subclass and not a copy: one reset-aware LSTM implementation; the parameter names
    (``lstm.weight_ih_l0`` ...) that checkpoints and ``fiberlab.fibration`` rely on stay the same.
    """

    def __init__(self, input_size: int, hidden_size: int, bias_init: float = 0.0) -> None:
        super().__init__(input_size, hidden_size, bias_init)


CORES = {"lstm": LSTMCore}
