"""A – Axon: a streaming diagonal recurrent trace unit (RTU, arXiv 2409.01449), and AxonLayer.

Each channel carries a complex trace ``c = c1 + i c2`` rotated and shrunk every step by
``lambda = r e^{i theta}`` (``g = r cos theta``, ``phi = r sin theta``):

    c1_t = g c1_{t-1} - phi c2_{t-1} + gamma w1 x_t
    c2_t = g c2_{t-1} + phi c1_{t-1} + gamma w2 x_t        i.e.  c_t = lambda c_{t-1} + gamma (w1 + i w2) x_t

with ``gamma = sqrt(1 - r^2)`` keeping the trace's scale independent of its memory length.

Why a complex number: the rotation-and-shrink is one complex multiply, so the whole recurrence is a
diagonal linear recurrence with the same decay at every step; a reset at step t sets that step's
decay to 0. A sequence runs as one compiled pass over time on CPUs (``kernels.rtu_loop``) and as
chunked Toeplitz matmuls elsewhere (``kernels.rtu_scan``).

Gradients: plain autograd within a call, through the carried state too (we do not detach it). The
reference instead keeps eligibility traces so nu, theta, w1, w2 get gradient from before the truncation
point of truncated BPTT; we leave that out on purpose: strict truncated BPTT (no gradient past the
segment) is then exactly what the trainer's detach between segments says, and the scan stays simple.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from fiberlab.cortex.base import MemoryModule, State
from fiberlab.cortex.config import CellConfig
from fiberlab.cortex.kernels.cpu_loops import runs_here
from fiberlab.cortex.kernels.rtu_loop import AVAILABLE as rtu_loop_available
from fiberlab.cortex.kernels.rtu_loop import rtu_loop
from fiberlab.cortex.kernels.rtu_scan import rtu_scan
from fiberlab.cortex.kernels.shapes import check_state, sequence_input


class AxonConfig(CellConfig):
    """Axon cell. ``r_min``/``r_max`` bound the decay modulus r: r^2 ~ U(r_min^2, r_max^2) at init."""

    r_min: float = Field(0.0, ge=0.0, le=1.0)
    r_max: float = Field(1.0, ge=0.0, le=1.0)
    max_phase: float = Field(6.28, gt=0.0)
    use_input_proj: bool = True


class DiagonalRTU(nn.Module):
    """The recurrent part alone: ``width`` independent complex traces of the input channels.

    Parameters live in unconstrained coordinates so any value is a valid unit:
    ``r = exp(-exp(nu_log))`` is always in (0, 1) and ``theta = exp(theta_log)`` always > 0.
    """

    def __init__(self, width: int, r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 6.28) -> None:
        super().__init__()
        if not 0.0 <= r_min <= r_max <= 1.0:
            raise ValueError(f"DiagonalRTU: need 0 <= r_min <= r_max <= 1, got r_min={r_min}, r_max={r_max}")
        self.width = width
        # r^2 ~ U(r_min^2, r_max^2), kept off {0, 1} where nu_log would be infinite
        r_sq = torch.empty(width).uniform_(r_min**2, r_max**2).clamp(1e-4, 1 - 1e-4)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(r_sq)))  # r = exp(-exp(nu_log)) <=> nu_log = log(-log r)
        theta = torch.empty(width).uniform_(0.0, max_phase).clamp_min(1e-4)
        self.theta_log = nn.Parameter(torch.log(theta))  # theta = exp(theta_log)
        bound = 1.0 / math.sqrt(width)
        self.w1 = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.w2 = nn.Parameter(torch.empty(width).uniform_(-bound, bound))

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        z = torch.zeros(batch, self.width, device=device, dtype=dtype)
        return {"c1": z, "c2": z.clone()}

    def _decay(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log r, theta, beta)`` with ``lambda = e^{log r + i theta}`` and ``beta = gamma (w1 + i w2)``."""
        log_r = -torch.exp(self.nu_log)  # log r = -exp(nu_log)
        gamma = torch.sqrt(-torch.expm1(2 * log_r))  # gamma = sqrt(1 - r^2), exact for r -> 1
        return log_r, torch.exp(self.theta_log), torch.complex(gamma * self.w1, gamma * self.w2)

    def traces(self, u: torch.Tensor, state: State | None, resets: torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """u ``[B, T, width]`` -> traces ``[B, T, 2 width]`` and the state after the last step.

        The traces come interleaved ``(c1_0, c2_0, c1_1, c2_1, ...)``: a free view of the complex
        tensor; a Linear on them is the reference's Linear on ``[c1; c2]`` with its columns permuted.
        """
        B, T, W = u.shape
        log_r, theta, beta = self._decay()
        c0 = None
        if state is not None:
            check_state(state, {"c1": (B, W), "c2": (B, W)}, type(self).__name__)
            c0 = torch.complex(state["c1"].to(u.dtype), state["c2"].to(u.dtype))
        if T == 1:  # one step (the acting path): c = lambda c_prev + beta u, zeroed before a reset
            c = beta * u[:, 0]
            if c0 is not None:
                keep = 1.0 if resets is None else (~resets[:, 0]).to(u.dtype).unsqueeze(-1)
                c = c + keep * torch.polar(torch.exp(log_r), theta) * c0
            c, last = c.unsqueeze(1), c
        else:  # CPU: one compiled pass over time; GPU: chunked Toeplitz matmuls
            scan = rtu_loop if rtu_loop_available and runs_here(u) else rtu_scan
            c, last = scan(u, log_r, theta, beta, c0, resets)
        return torch.view_as_real(c).flatten(-2), {"c1": last.real.contiguous(), "c2": last.imag.contiguous()}


class AxonCell(MemoryModule):
    """``y = out_proj([c1, c2])`` with the traces of ``input_proj(x)`` (``[.., H] -> [.., H]``).

    State: ``c1``, ``c2`` ``[B, H]`` (real and imaginary parts of the traces).
    """

    def __init__(self, cfg: AxonConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.d_hidden = H = cfg.d_hidden
        self.input_proj = None
        if cfg.use_input_proj:
            self.input_proj = nn.Linear(H, H, bias=False)
            nn.init.orthogonal_(self.input_proj.weight)
        self.rtu = DiagonalRTU(H, cfg.r_min, cfg.r_max, cfg.max_phase)
        self.out_proj = nn.Linear(2 * H, H)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return self.rtu.init_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_hidden, "AxonCell")
        u = self.input_proj(x) if self.input_proj is not None else x
        c, new_state = self.rtu.traces(u, state, resets)
        y = self.out_proj(c)
        return (y[:, 0] if single else y), new_state


class AxonLayer(MemoryModule):
    """A stateful stand-in for ``nn.Linear`` (the "^" of the pattern language):

        y = Linear(d_in -> d_out)(x) + out_proj([c1; c2]),   c = RTU traces of x (d_in channels)

    Why traces of x itself (width d_in, no input projection): the Linear path already mixes channels,
    so the recurrent path only adds a per-channel memory of the recent inputs, the cheapest one.
    State: ``c1``, ``c2`` ``[B, d_in]``.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 6.28) -> None:
        super().__init__()
        if d_in < 1 or d_out < 1:
            raise ValueError(f"AxonLayer: d_in and d_out must be >= 1, got d_in={d_in}, d_out={d_out}")
        self.d_in, self.d_out = d_in, d_out
        self.d_hidden = d_out
        self.linear = nn.Linear(d_in, d_out, bias=bias)
        self.rtu = DiagonalRTU(d_in, r_min, r_max, max_phase)
        self.out_proj = nn.Linear(2 * d_in, d_out, bias=False)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        return self.rtu.init_state(batch, device, dtype)

    def forward(self, x: torch.Tensor, state: State | None = None, *, resets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        x, resets, single = sequence_input(x, resets, self.d_in, "AxonLayer")
        c, new_state = self.rtu.traces(x, state, resets)
        y = self.linear(x) + self.out_proj(c)
        return (y[:, 0] if single else y), new_state
