"""Recurrent cores: swappable memory modules with a dict state.

Interface shared with the memory library of a later issue, so any core stands where the LSTM
stands: ``forward(x, state=None, *, resets=None) -> (y, new_state)`` where ``x`` is ``[B, H]`` (one
step) or ``[B, T, H]`` (a sequence), ``state`` a dict of ``[B, ...]`` tensors, and ``resets`` a bool
``[B]`` / ``[B, T]`` mask meaning "an episode starts at this step: zero the state before it".
"""
from __future__ import annotations

import torch
from torch import nn

State = dict[str, torch.Tensor]


class LSTMCore(nn.Module):
    """``nn.LSTM`` with episode resets applied inside a sequence.

    Why chunks: ``nn.LSTM`` runs a whole sequence in C++, but cannot zero the state of one row
    mid-sequence. We cut the time axis only at the steps where some row resets, run each chunk in
    one call and zero the resetting rows between chunks; the result equals a step-by-step loop.
    """

    def __init__(self, input_size: int, hidden_size: int, bias_init: float = 0.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        for name, p in self.lstm.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(p, 1.0)
            else:
                nn.init.constant_(p, bias_init)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        z = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        return {"h": z, "c": z.clone()}

    @staticmethod
    def reset_state(state: State, mask: torch.Tensor) -> State:
        """Zero the rows of ``state`` where ``mask`` is True."""
        keep = (~mask).to(next(iter(state.values())).dtype).unsqueeze(-1)
        return {k: v * keep for k, v in state.items()}

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        single = x.dim() == 2
        if single:
            x = x.unsqueeze(1)
            resets = None if resets is None else resets.unsqueeze(1)
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        if single:  # one step (acting): the fused cell skips nn.LSTM's per-call sequence set-up
            h, c = state["h"], state["c"]
            if resets is not None and bool(resets.any()):
                keep = (~resets[:, 0]).to(x.dtype).unsqueeze(-1)
                h, c = h * keep, c * keep
            lstm = self.lstm
            h, c = torch.lstm_cell(x[:, 0], (h, c), lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
            return h, {"h": h, "c": c}
        h, c = state["h"].unsqueeze(0), state["c"].unsqueeze(0)
        if resets is None or not bool(resets.any()):
            y, (h, c) = self.lstm(x, (h, c))
        else:
            cuts = torch.nonzero(resets.any(0)).flatten().tolist()
            bounds = sorted(set([0] + cuts + [T]))
            outs = []
            for start, end in zip(bounds[:-1], bounds[1:]):
                keep = (~resets[:, start]).to(x.dtype).view(1, B, 1)
                h, c = h * keep, c * keep
                y_chunk, (h, c) = self.lstm(x[:, start:end], (h, c))
                outs.append(y_chunk)
            y = torch.cat(outs, dim=1)
        new_state = {"h": h.squeeze(0), "c": c.squeeze(0)}
        return y, new_state


CORES = {"lstm": LSTMCore}
