"""L – LSTM cell: ``nn.LSTM`` that honours episode resets inside a sequence.

The one LSTM implementation of fiberlab: ``fiberlab.policies.cores.LSTMCore`` is a thin subclass of
``ResetLSTM`` (the layering rule lets ``policies`` import ``cortex``, never the reverse), so its
parameters stay ``lstm.weight_ih_l0`` ... and checkpoints and ``fiberlab.fibration`` keep working.
"""
from __future__ import annotations

import torch
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class LSTMConfig(CellConfig):
    """LSTM cell: orthogonal weights, biases ``bias_init`` plus ``forget_bias`` on the forget gate.

    Why not the reference's "every bias 1.0": ``nn.LSTM`` has two bias vectors, so every gate
    starts at +2 and the cell input ``tanh(g)`` saturates near 0.96 for every input; measured on
    ``demo`` (1 layer, d=128, 100 k steps) the pattern ``L`` stayed at the random return (-0.5) with
    it and learned like the plain LSTM policy with biases 0. A forget bias of 1 (Jozefowicz et al.,
    2015) keeps the long memory the reference wanted from its bias.
    """

    bias_init: float = 0.0
    forget_bias: float = 1.0


class ResetLSTM(MemoryModule):
    """``nn.LSTM(input_size -> hidden_size)`` with resets applied inside a sequence.

    Why chunks: ``nn.LSTM`` runs a whole sequence in C++ (or cuDNN), but cannot zero the state of
    one row mid-sequence. We cut the time axis only at the steps where some row resets, run each
    chunk in one call and zero the resetting rows between chunks; the result equals a step-by-step
    loop. State: ``h``, ``c`` ``[B, hidden_size]``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias_init: float = 0.0, forget_bias: float = 0.0) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"ResetLSTM: input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        self.input_size = input_size
        self.hidden_size = self.d_hidden = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        for name, p in self.lstm.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(p, 1.0)
            else:
                nn.init.constant_(p, bias_init)
        with torch.no_grad():  # gate order i, f, g, o: the forget gate's rows are [H, 2H)
            self.lstm.bias_ih_l0[hidden_size : 2 * hidden_size] += forget_bias

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        z = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        return {"h": z, "c": z.clone()}

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.input_size, type(self).__name__)
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        else:
            check_state(state, {"h": (B, self.hidden_size), "c": (B, self.hidden_size)}, type(self).__name__)
        h, c = state["h"], state["c"]
        if single:  # one step (acting): the fused cell skips nn.LSTM's per-call sequence set-up
            if resets is not None:
                keep = (~resets[:, 0]).to(x.dtype).unsqueeze(-1)
                h, c = h * keep, c * keep
            lstm = self.lstm
            h, c = torch.lstm_cell(x[:, 0], (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
            return h, {"h": h, "c": c}
        h, c = h.unsqueeze(0), c.unsqueeze(0)  # nn.LSTM wants [layers, B, H]
        if resets is None or not bool(resets.any()):
            y, (h, c) = self.lstm(x, (h, c))
        else:
            cuts = torch.nonzero(resets.any(0)).flatten().tolist()
            bounds = sorted(set([0] + cuts + [T]))
            outs = []
            for start, end in zip(bounds[:-1], bounds[1:]):
                keep = (~resets[:, start]).to(x.dtype).view(1, B, 1)  # zero the state BEFORE step `start`
                h, c = h * keep, c * keep
                y_chunk, (h, c) = self.lstm(x[:, start:end], (h, c))
                outs.append(y_chunk)
            y = torch.cat(outs, dim=1)
        return y, {"h": h.squeeze(0), "c": c.squeeze(0)}


class LSTMCell(ResetLSTM):
    """The pattern token ``L``: a square ``[.., H] -> [.., H]`` reset-aware LSTM."""

    def __init__(self, cfg: LSTMConfig) -> None:
        super().__init__(cfg.d_hidden, cfg.d_hidden, cfg.bias_init, cfg.forget_bias)
        self.cfg = cfg
