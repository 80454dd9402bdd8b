"""Policies: recurrent actor-critics built from (architecture name, config).

:data:`ARCHITECTURES` holds one frozen :class:`Architecture` record per name (its published widths
and fixed choices); :func:`build_policy` reads it, so nothing but a known name is ever built.
"""
from fiberlab.policies.architectures import (
    ARCHITECTURES,
    Architecture,
    CortexDefaults,
    architecture,
)
from fiberlab.policies.build import build_policy, resolve
from fiberlab.policies.cores import CORES, LSTMCore
from fiberlab.policies.policy import RecurrentPolicy

__all__ = [
    "ARCHITECTURES", "CORES", "Architecture", "CortexDefaults", "LSTMCore", "RecurrentPolicy", "architecture",
    "build_policy", "resolve",
]
