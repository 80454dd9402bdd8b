"""Policies: a registry of recurrent actor-critics built from (architecture name, config)."""
from fiberlab.policies.cores import CORES, LSTMCore
from fiberlab.policies.policy import RecurrentPolicy
from fiberlab.policies.registry import ARCHITECTURES, build_policy, resolve

__all__ = ["ARCHITECTURES", "CORES", "LSTMCore", "RecurrentPolicy", "build_policy", "resolve"]
