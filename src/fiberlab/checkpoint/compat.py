"""Does a checkpoint fit the environment at hand? Levels, reasons, and the by-name remapping.

Levels (worst wins): FULL (load as is), PARTIAL (loads; warnings say what was adapted),
INCOMPATIBLE (refused unless forced), UNKNOWN (the file could not be judged, e.g. a legacy pickle).

Rules:
- format version: current -> FULL; older -> PARTIAL (loads through the upgrade chain; migrate it);
  newer than this fiberlab -> INCOMPATIBLE (upgrade fiberlab).
- observations: same spec -> FULL; same shape with features reordered or renamed -> PARTIAL (the
  first layer's input weights are permuted by feature name); other shape, dtype or channel count
  -> INCOMPATIBLE.
- actions: same -> FULL; reordered, subset or superset by name -> PARTIAL (actor rows permuted;
  actions the checkpoint never knew get a logit of -1e9, so they are never chosen); a head that
  cannot be mapped by name -> INCOMPATIBLE.
- architecture: unknown to the registry -> INCOMPATIBLE; config fields added since it was written
  -> PARTIAL, the defaults named; fields this fiberlab does not know -> INCOMPATIBLE.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from fiberlab.checkpoint.base import FORMAT_VERSION, FormatTooNew, check_version
from fiberlab.checkpoint.manifest import Manifest, first_error, validate_manifest
from fiberlab.config import PolicyConfig
from fiberlab.policies import ARCHITECTURES, build_policy

LEVELS = ("FULL", "PARTIAL", "INCOMPATIBLE", "UNKNOWN")
NEVER_LOGIT = -1e9  # bias of an action the checkpoint never knew: softmax gives it probability 0


@dataclass
class Remap:
    """How to adapt a policy to the env: ``obs_index[j]`` / ``action_index[j]`` is the checkpoint's
    index for the env's feature / action ``j`` (None: an action the checkpoint never knew)."""

    obs_index: list[int] | None
    action_index: list[int | None] | None
    env_spec: dict[str, Any]


@dataclass
class CompatibilityReport:
    level: str = "FULL"
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    policy_config: dict[str, Any] = field(default_factory=dict)
    remap: Remap | None = None

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def recommend(self, msg: str) -> None:
        if msg not in self.recommendations:
            self.recommendations.append(msg)

    def finish(self) -> CompatibilityReport:
        if self.level != "UNKNOWN":
            self.level = "INCOMPATIBLE" if self.errors else "PARTIAL" if self.warnings else "FULL"
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("policy_config")
        d["remap"] = None if self.remap is None else {"obs_index": self.remap.obs_index, "action_index": self.remap.action_index}
        return d


def _names(names: Any) -> list[str]:
    return [str(n) for n in names or []]


def _map_by_name(old: list[str], new: list[str]) -> tuple[list[int | None], list[str]]:
    """For each new name, the old index with that name; unmatched new names take the unmatched
    old positions in order (renames). Returns the mapping and the renames found."""
    index = {n: i for i, n in enumerate(old)}
    mapping: list[int | None] = [index.get(n) for n in new]
    free_old = [i for i, n in enumerate(old) if n not in set(new)]
    renames = []
    for j, m in enumerate(mapping):
        if m is None and free_old:
            mapping[j] = free_old.pop(0)
            renames.append(f"{old[mapping[j]]}->{new[j]}")
    return mapping, renames


def _check_version(manifest: Manifest, report: CompatibilityReport, where: str) -> None:
    if manifest.format_version < FORMAT_VERSION:
        report.warn(f"format version {manifest.format_version} is older than the current {FORMAT_VERSION} (loads through the upgrade chain)")
        report.recommend(f"rewrite it in the current format: fiberlab ckpt migrate {where}")


# PolicyConfig fields added with the cortex cores (issue 5); they are read only when core=cortex.
CORTEX_ONLY_FIELDS = frozenset({"pattern", "d_hidden", "num_layers", "cortex_overrides"})


def _check_architecture(manifest: Manifest, report: CompatibilityReport) -> None:
    arch = manifest.architecture
    cfg = dict(manifest.policy_config)
    if arch not in ARCHITECTURES:
        report.error(f"architecture {arch!r} is unknown to this fiberlab (known: {', '.join(sorted(ARCHITECTURES))})")
        report.recommend("upgrade fiberlab, or load it with the fiberlab version that wrote it")
        return
    known = set(PolicyConfig.model_fields)
    extra = sorted(set(cfg) - known)
    if extra:
        report.error(f"policy config fields {', '.join(extra)} are unknown to this fiberlab (written by a newer version?)")
        report.recommend("upgrade fiberlab")
        return
    added = sorted(known - set(cfg))
    if cfg.get("core", "lstm") == "lstm":  # the cortex fields build nothing for an LSTM core: no change
        added = [k for k in added if k not in CORTEX_ONLY_FIELDS]
    if added:
        defaults = {k: PolicyConfig.model_fields[k].default for k in added}
        report.warn("config fields added since it was written take their defaults: " + ", ".join(f"{k}={v!r}" for k, v in defaults.items()))
    try:
        report.policy_config = PolicyConfig.model_validate(cfg, strict=True).model_dump()  # file data: no "8" for 8
    except ValidationError as e:
        report.error(f"policy config is invalid: {first_error(e)}")


def _check_env(manifest: Manifest, env: dict[str, Any], report: CompatibilityReport) -> None:
    ck = manifest.env_spec
    obs_index: list[int] | None = None
    action_index: list[int | None] | None = None
    if ck.name and env.get("name") and ck.name != env["name"]:
        report.warn(f"trained on {ck.name}, the env is {env['name']}")
    # observations
    if list(ck.obs_shape or []) != list(env["obs_shape"]):
        report.error(f"observation shape {ck.obs_shape} != env's {list(env['obs_shape'])}")
    elif ck.obs_dtype != env.get("obs_dtype"):
        report.error(f"observation dtype {ck.obs_dtype} != env's {env.get('obs_dtype')}")
    else:
        old, new = _names(ck.feature_names), _names(env.get("feature_names"))
        if old != new and old and new and len(old) == len(new) == env["obs_shape"][0]:
            mapping, renames = _map_by_name(old, new)
            obs_index = [int(m) for m in mapping]  # same count: every feature is matched
            if renames:
                report.warn(f"observation features renamed (mapped by position): {', '.join(renames)}")
            if sorted(set(old) & set(new)) and any(old[m] != n for m, n in zip(obs_index, new) if n in old):
                report.warn("observation features reordered: remapped by name")
        elif old != new:
            report.warn("observation feature names differ and cannot be matched one-to-one: used as they are")
    # actions
    old_a, new_a = _names(ck.action_names), _names(env.get("action_names"))
    n_old, n_new = ck.num_actions or len(old_a), int(env["num_actions"])
    if old_a == new_a and n_old == n_new:
        pass
    elif old_a and new_a and set(old_a) & set(new_a):
        index = {n: i for i, n in enumerate(old_a)}
        action_index = [index.get(n) for n in new_a]
        dropped = [n for n in old_a if n not in set(new_a)]
        unknown = [n for n in new_a if n not in index]
        parts = []
        if dropped:
            parts.append(f"checkpoint actions missing from the env are dropped: {', '.join(dropped)}")
        if unknown:
            parts.append(f"env actions the checkpoint never knew are never chosen: {', '.join(unknown)}")
        if not parts:
            parts.append("actions reordered: remapped by name")
        report.warn("; ".join(parts))
    elif n_old == n_new and not (old_a and new_a):
        report.warn("action names missing: actions used by position")
    else:
        report.error(f"action head of {n_old} ({', '.join(old_a) or 'unnamed'}) cannot be mapped to the env's {n_new} actions ({', '.join(new_a) or 'unnamed'})")
    if report.errors:
        report.recommend(f"use it with the environment it was trained on ({ck.name}), or train a new policy for {env.get('name')}")
    if obs_index is not None or action_index is not None:
        report.remap = Remap(obs_index, action_index, env)


def check_compatibility(manifest: Manifest | dict[str, Any], env_spec: Any = None, *, path: str | Path | None = None) -> CompatibilityReport:
    """Judge ``manifest`` (a validated :class:`Manifest`, or a stored dict, validated here)
    against ``env_spec``. A format newer than this fiberlab is INCOMPATIBLE; a manifest that fails
    validation raises :class:`~fiberlab.checkpoint.base.CheckpointError`."""
    report = CompatibilityReport()
    where = str(path) if path else "PATH"
    if isinstance(manifest, dict):
        try:
            check_version(where, manifest)
        except FormatTooNew as e:
            report.error(str(e).split(": ", 1)[-1].removesuffix("; upgrade fiberlab"))
            report.recommend("upgrade fiberlab to a release that reads this format")
            return report.finish()
        manifest = validate_manifest(where, manifest)
    _check_version(manifest, report, where)
    _check_architecture(manifest, report)
    if env_spec is not None:
        env = env_spec.to_dict() if hasattr(env_spec, "to_dict") else dict(env_spec)
        _check_env(manifest, env, report)
    if report.errors:
        report.recommend("loading with force=True (fiberlab eval ... force=true) ignores this report at your own risk")
    return report.finish()


def unknown_report(reason: str, where: str) -> CompatibilityReport:
    """UNKNOWN: not a fiberlab checkpoint we can judge (a legacy pickle, say)."""
    r = CompatibilityReport(level="UNKNOWN", errors=[reason])
    r.recommend(f"convert it first: fiberlab ckpt migrate {where}")
    r.recommend("if it was a fiberlab checkpoint, it is damaged before its manifest: restore a copy")
    return r


def corrupt_report(reason: str) -> CompatibilityReport:
    """INCOMPATIBLE because the file itself is damaged or inconsistent: nothing can load it."""
    r = CompatibilityReport(errors=[reason])
    r.recommend("restore the file from a backup or an earlier checkpoint; it cannot be trusted as it is")
    return r.finish()


def _first_layer(policy: nn.Module) -> nn.Module:
    for m in policy.encoder.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            return m
    raise ValueError("policy has no first linear or conv layer to remap observations on")


@torch.no_grad()
def apply_remap(policy: nn.Module, remap: Remap) -> nn.Module:
    """A copy of ``policy`` that acts on the env's feature and action order exactly as the
    original acted on its own: ``W'[:, j] = W[:, obs_index[j]]`` on the first layer's inputs and
    ``W'[j] = W[action_index[j]]`` on the actor's output rows."""
    cfg = policy.config.model_copy(deep=True)
    updates: dict[str, Any] = {}
    if remap.obs_index is not None and cfg.obs_scale and len(cfg.obs_scale) > 1:
        updates["obs_scale"] = [cfg.obs_scale[i] for i in remap.obs_index]
    if remap.action_index is not None:
        updates["num_actions"] = len(remap.action_index)
    new = build_policy(cfg.model_copy(update=updates))
    state = copy.deepcopy(policy.state_dict())
    if remap.obs_index is not None:
        name = next(n for n, m in policy.named_modules() if m is _first_layer(policy))
        idx = torch.tensor(remap.obs_index)
        state[f"{name}.weight"] = state[f"{name}.weight"].index_select(1, idx)
    if remap.action_index is not None:
        out = [n for n, m in policy.actor.named_modules() if isinstance(m, nn.Linear)][-1]
        w, b = state[f"actor.{out}.weight"], state[f"actor.{out}.bias"]
        w2 = torch.zeros(len(remap.action_index), w.shape[1], dtype=w.dtype)
        b2 = torch.full((len(remap.action_index),), NEVER_LOGIT, dtype=b.dtype)
        for j, i in enumerate(remap.action_index):
            if i is not None:
                w2[j], b2[j] = w[i], b[i]
        state[f"actor.{out}.weight"], state[f"actor.{out}.bias"] = w2, b2
    new.load_state_dict(state, strict=True)
    return new.to(next(policy.parameters()).device)
