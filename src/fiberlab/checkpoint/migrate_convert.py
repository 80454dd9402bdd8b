"""Converting what a legacy file holds into a fiberlab policy, optimizer and manifest fields.

Weights named the fiberlab way, the PufferLib Atari way or the Metta Fast way are renamed onto a
registry architecture whose widths are read off the tensor shapes (``legacy_layouts.py``); the
policy is rebuilt and its weights loaded strictly, and an Adam/AdamW state is moved from the
source's parameter order to ours, before anything is written (writing is ``migrate.py``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fiberlab.checkpoint.legacy_layouts import (
    MigrationError,
    infer_policy_config,
    map_state_dict,
)
from fiberlab.checkpoint.migrate_sources import Source
from fiberlab.errors import first_line
from fiberlab.policies import build_policy


def convert_optimizer(opt_sd: Mapping, key_map: dict[str, str], policy: nn.Module) -> tuple[torch.optim.Optimizer | None, str | None]:
    """An Adam/AdamW over ``policy`` holding ``opt_sd``'s state, moved from the source parameter
    order (the state dict's order, as ``model.parameters()`` gives it) to fiberlab's; or a reason
    why it was dropped."""
    groups = opt_sd.get("param_groups")
    state = opt_sd.get("state")
    if not isinstance(groups, list) or not isinstance(state, Mapping) or not all(isinstance(g, Mapping) and "params" in g for g in groups):
        return None, "optimizer state dropped: not a torch optimizer state_dict"
    adam_keys = {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    if not all("betas" in g for g in groups) or not all(isinstance(s, Mapping) and set(s) <= adam_keys and {"exp_avg", "exp_avg_sq"} <= set(s) for s in state.values()):
        return None, "optimizer state dropped: not an Adam state_dict (only Adam/AdamW state is converted)"
    source_keys = list(key_map)
    flat_ids = [pid for g in groups for pid in g["params"]]
    if len(flat_ids) != len(source_keys):
        return None, f"optimizer state dropped: it has {len(flat_ids)} parameters, the policy {len(source_keys)}"
    ours = dict(policy.named_parameters())
    order = {n: i for i, n in enumerate(ours)}
    name_of_id = {pid: key_map[source_keys[i]] for i, pid in enumerate(flat_ids)}
    if set(name_of_id.values()) != set(ours):
        return None, "optimizer state dropped: its parameters do not cover the policy's"
    for pid, s in state.items():
        if pid not in name_of_id:
            return None, f"optimizer state dropped: state for parameter {pid}, which no group holds"
        shape = tuple(ours[name_of_id[pid]].shape)
        if tuple(s["exp_avg"].shape) != shape:
            return None, f"optimizer state dropped: moments of parameter {pid} {tuple(s['exp_avg'].shape)} do not fit {name_of_id[pid]} {shape}"
    new_groups, new_state, hyper_groups = [], {}, []
    next_id = 0
    for g in groups:
        names = sorted((name_of_id[pid] for pid in g["params"]), key=order.__getitem__)
        inverse = {name_of_id[pid]: pid for pid in g["params"]}
        ids = []
        for n in names:
            if inverse[n] in state:
                new_state[next_id] = dict(state[inverse[n]])
            ids.append(next_id)
            next_id += 1
        new_groups.append({"params": [ours[n] for n in names]})
        hyper_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
    decoupled = any(g.get("decoupled_weight_decay") for g in groups)
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)(new_groups)
    try:
        opt.load_state_dict({"state": new_state, "param_groups": hyper_groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        return None, f"optimizer state dropped: {first_line(e)}"
    return opt, None


def convert_legacy(path: Path, source: Source) -> tuple[nn.Module, dict[str, Any], torch.optim.Optimizer | None, str, list[str]]:
    """Policy (weights loaded strictly), manifest fields, optimizer, layout and warnings for the
    legacy file ``path`` holding ``source``; MigrationError if it cannot be converted."""
    hints, convention, opt_sd = source.hints, source.convention, source.optimizer
    renamed, key_map, layout, extras = map_state_dict(source.state_dict)
    cfg, notes = infer_policy_config(renamed, extras.get("obs_scale"))
    try:
        policy = build_policy(cfg)
    except (ValueError, TypeError) as e:
        raise MigrationError(f"cannot build {cfg.get('name')} with the inferred widths ({first_line(e)})") from None
    try:
        policy.load_state_dict({k: v.detach().to(torch.float32) if v.is_floating_point() else v for k, v in renamed.items()}, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise MigrationError(f"weights do not fit the inferred {cfg['name']} policy ({lines[1] if len(lines) > 1 else lines[0]})") from None
    warn = list(notes)
    optimizer = None
    if opt_sd is not None:
        optimizer, why = convert_optimizer(opt_sd, key_map, policy)
        if why:
            warn.append(why)
    for missing in ("epoch", "agent_step"):
        if missing not in hints:
            warn.append(f"{missing} unknown: recorded as 0")
    env_spec = {
        "name": "unknown",
        "obs_shape": list(cfg["obs_shape"]),
        "obs_dtype": "float32" if cfg["name"] == "mlp_lstm" else "uint8",
        "num_actions": cfg["num_actions"],
        "feature_names": [],  # unknown: empty names make the compatibility check match by position
        "action_names": [],
        "obs_scale": list(cfg["obs_scale"] or [1.0]),
        "agents_per_env": 1,
    }
    progress = {"epoch": int(hints.get("epoch", 0)), "agent_step": int(hints.get("agent_step", 0)), "wall_time": float(hints.get("wall_time", 0.0))}
    if "score" in hints:
        progress["score"] = hints["score"]
    fields = {
        "env_spec": env_spec,
        "progress": progress,
        "run": hints.get("run") or path.stem,
        "seed": hints.get("seed"),
        "name_convention": convention,
    }
    return policy, fields, optimizer, layout, warn
