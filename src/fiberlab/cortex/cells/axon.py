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

Gradients: plain autograd within a call, through the carried state too (we do not detach it).
Truncated BPTT stores the state detached, so by default no gradient reaches past a segment's start.

Eligibility traces (``trainer.axon_traces``, :func:`set_eligibility_traces`): real-time recurrent
learning is cheap for a diagonal recurrence, so the RTU can carry, next to ``c``, its derivatives with
respect to its own parameters, lambda (decay and phase: nu_log, theta_log) and beta (gamma, w1, w2):

    c_t = d_t lambda c_{t-1} + beta u_t          (d_t = 0 where a reset zeroes the state before t)
    e^lam_t  = dc_t/dlambda = d_t (c_{t-1} + lambda e^lam_{t-1})
    e^beta_t = dc_t/dbeta   = d_t lambda e^beta_{t-1} + u_t

(holomorphic in lambda and beta, so complex derivatives). A segment that starts from a stored,
detached c_0 with traces e_0 then uses

    c_0' = c_0 + (lambda - sg(lambda)) e^lam_0 + (beta - sg(beta)) e^beta_0     (sg = stop-gradient)

whose value is exactly c_0 but whose gradient with respect to lambda and beta is dL/dc_0 times the
traces: the chain rule through everything before the segment, without the graph. For the RTU's own
parameters this equals full BPTT exactly when the parameters did not change between the segments
(tests/test_tbptt.py); the input u still gets no gradient from before the segment, so upstream
weights (input_proj, earlier layers) stay truncated. The traces live in the state (keys ``e_lam1``,
``e_lam2``, ``e_beta1``, ``e_beta2``: real and imaginary parts), are detached like it, and cost two
extra passes over time per sequence call.
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

TRACE_KEYS = ("e_lam1", "e_lam2", "e_beta1", "e_beta2")  # dc/dlambda, dc/dbeta (real, imaginary)


def _read_traces(state: State, B: int, W: int, dtype: torch.dtype, who: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(e^lam, e^beta) as complex [B, W] from ``state``; None when the state carries none (a state
    made before traces were switched on: its traces are zero, which is what a fresh start has)."""
    if not all(k in state for k in TRACE_KEYS):
        return None
    check_state({k: state[k] for k in TRACE_KEYS}, {k: (B, W) for k in TRACE_KEYS}, who)
    return (torch.complex(state["e_lam1"].to(dtype), state["e_lam2"].to(dtype)),
            torch.complex(state["e_beta1"].to(dtype), state["e_beta2"].to(dtype)))


def set_eligibility_traces(module: nn.Module, on: bool) -> int:
    """Switch Axon eligibility traces on or off in every RTU inside ``module`` (Axon cells and the
    ``^`` AxonLayers); returns how many RTUs there are. Call before making states: with traces the
    state carries four more tensors per RTU."""
    n = 0
    for m in module.modules():
        if isinstance(m, DiagonalRTU):
            m.eligibility_traces = on
            n += 1
    return n


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

    eligibility_traces: bool = False  # set by set_eligibility_traces (trainer.axon_traces)

    def init_state(self, batch: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        z = torch.zeros(batch, self.width, device=device, dtype=dtype)
        keys = ("c1", "c2", *TRACE_KEYS) if self.eligibility_traces else ("c1", "c2")
        return {k: z.clone() for k in keys}

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
        lam = torch.polar(torch.exp(log_r), theta)  # lambda = r e^{i theta}
        c0 = traces0 = None
        if state is not None:
            check_state(state, {"c1": (B, W), "c2": (B, W)}, type(self).__name__)
            c0 = torch.complex(state["c1"].to(u.dtype), state["c2"].to(u.dtype))
            if self.eligibility_traces:
                traces0 = _read_traces(state, B, W, u.dtype, type(self).__name__)
                # c_0' = c_0 + (lambda - sg lambda) e^lam_0 + (beta - sg beta) e^beta_0: the value of c_0,
                # the gradient of everything before the segment (module docstring)
                c0 = c0 + (lam - lam.detach()) * traces0[0] + (beta - beta.detach()) * traces0[1]
        if T == 1:  # one step (the acting path): c = lambda c_prev + beta u, zeroed before a reset
            c = beta * u[:, 0]
            if c0 is not None:
                keep = 1.0 if resets is None else (~resets[:, 0]).to(u.dtype).unsqueeze(-1)
                c = c + keep * lam * c0
            c, last = c.unsqueeze(1), c
        else:  # CPU: one compiled pass over time; GPU: chunked Toeplitz matmuls
            c, last = self._scan(u, log_r, theta, beta, c0, resets)
        new_state = {"c1": last.real.contiguous(), "c2": last.imag.contiguous()}
        if self.eligibility_traces:
            with torch.no_grad():
                new_state.update(self._advance_traces(u, c, c0, traces0, log_r, theta, lam, resets))
        return torch.view_as_real(c).flatten(-2), new_state

    @staticmethod
    def _scan(u: torch.Tensor, log_r: torch.Tensor, theta: torch.Tensor, beta: torch.Tensor, h0: torch.Tensor | None,
              resets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        scan = rtu_loop if rtu_loop_available and runs_here(u) else rtu_scan
        return scan(u, log_r, theta, beta, h0, resets)

    def _advance_traces(self, u: torch.Tensor, c: torch.Tensor, c0: torch.Tensor | None, traces0: tuple[torch.Tensor, torch.Tensor] | None,
                        log_r: torch.Tensor, theta: torch.Tensor, lam: torch.Tensor, resets: torch.Tensor | None) -> State:
        """The traces after the last step of ``u`` (module docstring):

            e^beta_t = d_t lambda e^beta_{t-1} + u_t            (c's recurrence with beta = 1)
            e^lam_t  = d_t lambda e^lam_{t-1} + d_t c_{t-1}     (the same, fed the previous states)

        Each is the RTU's own recurrence with a unit input weight, so the same scan kernels run it;
        the complex input of e^lam is two real scans (the recurrence is linear in its input).
        """
        lam, log_r, theta = lam.detach(), log_r.detach(), theta.detach()
        B, T, W = u.shape
        e_lam0, e_beta0 = traces0 if traces0 is not None else (None, None)
        c = c.detach()
        c_prev = torch.cat([(c0.detach() if c0 is not None else c.new_zeros(B, W)).unsqueeze(1), c[:, :-1]], 1)  # c_{t-1}
        if resets is not None:
            c_prev = c_prev * (~resets).unsqueeze(-1)  # d_t c_{t-1}
        one = torch.ones(W, dtype=c.dtype, device=c.device)
        if T == 1:
            keep = 1.0 if resets is None else (~resets[:, 0]).to(u.dtype).unsqueeze(-1)
            e_beta = u[:, 0].to(c.dtype) + (keep * lam * e_beta0 if e_beta0 is not None else 0)
            e_lam = c_prev[:, 0] + (keep * lam * e_lam0 if e_lam0 is not None else 0)
        else:
            _, e_beta = self._scan(u.detach(), log_r, theta, one, e_beta0, resets)
            _, e_re = self._scan(c_prev.real.contiguous(), log_r, theta, one, e_lam0, resets)
            _, e_im = self._scan(c_prev.imag.contiguous(), log_r, theta, one, None, resets)
            e_lam = e_re + 1j * e_im
        return {"e_lam1": e_lam.real.contiguous(), "e_lam2": e_lam.imag.contiguous(),
                "e_beta1": e_beta.real.contiguous(), "e_beta2": e_beta.imag.contiguous()}


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
