"""The layer graph a policy declares to the fibration code.

Collapse code never special-cases an architecture: it walks this graph. Any policy assembled from
the registry's parts (convs -> flatten -> linears -> recurrent core -> actor and critic heads)
gets its graph from :func:`layer_graph`; a new architecture declares its own list of
:class:`Layer` and reuses find_fibers/collapse unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fiberlab.errors import BadInput


@dataclass(frozen=True)
class Layer:
    """One layer whose output units are nodes.

    ``kind``: conv | linear | lstm | out (outputs kept: actor logits, value). ``threshold``: which
    threshold clusters it (cnn, linear, lstm, critic). ``source``: the layer feeding it (None: the
    observation). ``width``: the PolicyConfig field and index its output width lives in.
    """

    name: str
    module: nn.Module
    kind: str
    threshold: str
    source: str | None
    width: tuple[str, int | None] | None


def _linears(seq: nn.Module) -> list[nn.Linear]:
    return [m for m in seq.modules() if isinstance(m, nn.Linear)]


def layer_graph(policy: nn.Module) -> list[Layer]:
    """The graph of a registry policy, in forward order (LSTM cores only: a cortex stack's experts,
    routers and gates are not a chain of unit layers, so their fibers are not defined here)."""
    core = getattr(policy.config, "core", "lstm")
    if core != "lstm":
        raise BadInput(f"fibration supports core=lstm; got core={core}")  # e.g. collapse --run of a cortex run
    g: list[Layer] = []
    src: str | None = None
    convs = [m for m in policy.encoder.modules() if isinstance(m, nn.Conv2d)]
    for i, conv in enumerate(convs):
        g.append(Layer(f"conv{i}", conv, "conv", "cnn", src, ("conv_channels", i)))
        src = g[-1].name
    for i, lin in enumerate(_linears(policy.encoder)):
        g.append(Layer(f"linear{i}", lin, "linear", "linear", src, ("linear", i)))
        src = g[-1].name
    g.append(Layer("core", policy.core.lstm, "lstm", "lstm", src, ("core_hidden", None)))
    for head, thr, field in (("actor", "linear", "actor_hidden"), ("critic", "critic", "critic_hidden")):
        lins = _linears(getattr(policy, head))
        prev = "core"
        for i, lin in enumerate(lins[:-1]):
            g.append(Layer(f"{head}{i}", lin, "linear", thr, prev, (field, i)))
            prev = g[-1].name
        g.append(Layer(f"{head}_out", lins[-1], "out", thr, prev, None))
    return g


def conv_output_positions(policy: nn.Module) -> int:
    """Spatial positions (H*W) of the last conv's output, i.e. features per channel at flatten."""
    convs = [m for m in policy.encoder.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return 1
    shape = policy.config.obs_shape
    x = torch.zeros(1, *shape, device="meta")
    for m in policy.encoder[0]:
        if isinstance(m, nn.Flatten):
            break
        x = m(x)
    return math.prod(x.shape[2:])
