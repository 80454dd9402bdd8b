"""Legacy weight layouts -> fiberlab's: key mapping and widths inferred from tensor shapes.

Three layouts are recognised: ours (used as is), PufferLib's Atari policy and Metta's Fast policy
(both renamed to our module paths). Every width is read off the tensor shapes, so a converted
file rebuilds through the registry like any other. Used by :mod:`fiberlab.checkpoint.migrate_convert`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

# Metta "Fast" layer names -> fiberlab "fast" module paths (both Metta's component policy,
# ``components.<layer>._net[.0].<param>``, and its plain-PyTorch class, ``<layer>.<param>``).
METTA_FAST_LAYERS = {
    "cnn1": "encoder.0.0",
    "cnn2": "encoder.0.2",
    "fc1": "encoder.1.0",
    "encoded_obs": "encoder.1.2",
    "_core_": "core.lstm",
    "lstm": "core.lstm",
    "actor_1": "actor.0",
    "_action_": "actor.2",
    "actor_head": "actor.2",
    "critic_1": "critic.0",
    "_value_": "critic.2",
    "value_head": "critic.2",
}
METTA_OBS_SCALE = ("obs_normalizer.obs_norm", "max_vec")  # per-channel divisors -> policy_config.obs_scale
LSTM_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
# Observation sizes a conv net's flatten width is checked against, before any square size.
KNOWN_SPATIAL = {"atari": [(105, 80), (84, 84)], "fast": [(11, 11)]}


class MigrationError(Exception):
    """A file that cannot be migrated: the message is the one-line reason in the report."""



def _strip_wrappers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in ("module.", "_orig_mod."):
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _layout(keys: list[str]) -> str:
    if keys and all(k.split(".", 1)[0] in ("encoder", "core", "actor", "critic") for k in keys):
        return "fiberlab"
    segments = {s for k in keys for s in k.split(".")}
    if {"cnn1", "critic_1", "actor_1"} <= segments:
        return "metta_fast"
    if any(re.search(r"(^|\.)(lstm|recurrent)\.weight_ih_l0$", k) for k in keys) and any(re.search(r"(^|\.)network\.\d+\.weight$", k) for k in keys):
        return "pufferlib_atari"
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    raise MigrationError(f"parameter names match no known layout (fiberlab, PufferLib Atari, Metta Fast): {shown}")


def _check_tied(sd: Mapping[str, torch.Tensor], tied: dict[str, str]) -> None:
    for copy, original in tied.items():
        if original not in sd or not torch.equal(sd[copy], sd[original]):
            raise MigrationError(f"{copy} differs from {original}: the LSTM cell is not tied to the LSTM")


def _map_pufferlib(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, Any]]:
    """PufferLib Atari (``policy.network.{0,2,4}`` convs, ``policy.network.7`` linear, ``lstm``,
    a tied ``cell``, ``policy.actor``, ``policy.value_fn``) -> fiberlab ``atari`` names."""
    mapping: dict[str, str] = {}
    network: dict[int, dict[str, str]] = {}
    tied: dict[str, str] = {}
    unmapped = []
    for k in sd:
        rest = k[len("policy."):] if k.startswith("policy.") else k
        if m := re.fullmatch(r"network\.(\d+)\.(weight|bias)", rest):
            network.setdefault(int(m[1]), {})[m[2]] = k
        elif m := re.fullmatch(r"(?:lstm|recurrent)\.(\w+_l0)", rest):
            mapping[k] = f"core.lstm.{m[1]}"
        elif m := re.fullmatch(r"cell\.(weight_ih|weight_hh|bias_ih|bias_hh)", rest):
            lstm_key = next((c for c in sd if re.fullmatch(rf"(?:policy\.)?(?:lstm|recurrent)\.{m[1]}_l0", c)), "")
            tied[k] = lstm_key
        elif m := re.fullmatch(r"actor\.(weight|bias)", rest):
            mapping[k] = f"actor.0.{m[1]}"
        elif m := re.fullmatch(r"(?:value_fn|value_function|value|critic)\.(weight|bias)", rest):
            mapping[k] = f"critic.0.{m[1]}"
        else:
            unmapped.append(k)
    if unmapped:
        raise MigrationError(f"PufferLib layout with parameters fiberlab's atari has no place for: {', '.join(unmapped[:6])}")
    _check_tied(sd, tied)
    convs = linears = 0
    for idx in sorted(network):
        group = network[idx]
        w = sd[group["weight"]] if "weight" in group else None
        if w is None:
            raise MigrationError(f"network.{idx} has a bias but no weight")
        if w.dim() == 4:
            if linears:
                raise MigrationError(f"network.{idx} is a convolution after a linear layer")
            target, convs = f"encoder.0.{2 * convs}", convs + 1
        elif w.dim() == 2:
            target, linears = f"encoder.1.{2 * linears}", linears + 1
        else:
            raise MigrationError(f"network.{idx}.weight has shape {tuple(w.shape)}: neither a convolution nor a linear layer")
        for p, key in group.items():
            mapping[key] = f"{target}.{p}"
    return mapping, {"obs_scale": [255.0]}  # PufferLib divides Atari pixels by 255 in encode_observations


def _map_metta(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, Any]]:
    """Metta Fast (component policy ``components.<layer>._net[.0].<param>``, ``_core_.lstm``, or
    the plain-PyTorch class ``<layer>.<param>``) -> fiberlab ``fast`` names."""
    if any(re.search(r"(^|\.)_action_\.W$", k) for k in sd):
        raise MigrationError("Metta's action-embedding actor head (_action_.W, tanh-bilinear) has no linear equivalent in fiberlab's fast policy")
    mapping: dict[str, str] = {}
    extras: dict[str, Any] = {}
    tied: dict[str, str] = {}
    unmapped = []
    for k in sd:
        rest = k
        for p in ("policy.", "components."):
            if rest.startswith(p):
                rest = rest[len(p):]
        if rest in METTA_OBS_SCALE:
            extras["obs_scale"] = [float(x) for x in sd[k].flatten().tolist()]
            continue
        if rest.startswith(("_obs_.", "obs_normalizer.")):
            continue  # token-to-box shaper buffers: nothing to learn from them
        if m := re.fullmatch(r"cell\.(weight_ih|weight_hh|bias_ih|bias_hh)", rest):
            tied[k] = next((c for c in sd if c.endswith(f"lstm.{m[1]}_l0")), "")
            continue
        layer, _, param = rest.partition(".")
        param = re.sub(r"^(?:_net\.(?:0\.)?|weight_net\.|lstm\.)", "", param)
        target = METTA_FAST_LAYERS.get(layer)
        if target is None or param not in (("weight", "bias") if target != "core.lstm" else LSTM_PARAMS):
            if re.fullmatch(r"\w+_l[1-9]\d*", param):
                raise MigrationError(f"{k}: a multi-layer LSTM; fiberlab's lstm core has one layer")
            if layer in ("_action_embeds_", "action_embeddings"):
                continue  # only used by an embedding head; a linear head (checked below) does not need them
            unmapped.append(k)
            continue
        mapping[k] = f"{target}.{param}"
    if unmapped:
        raise MigrationError(f"Metta layout with parameters fiberlab's fast has no place for: {', '.join(unmapped[:6])}")
    _check_tied(sd, tied)
    if not any(v.startswith("actor.2.") for v in mapping.values()):
        raise MigrationError("Metta Fast checkpoint without a linear action head (_action_ / actor_head)")
    return mapping, extras


def map_state_dict(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], str, dict[str, Any]]:
    """Rename a foreign state dict to fiberlab names.

    Returns the renamed dict, the key map (source name -> fiberlab name, in the source's order,
    which is its parameter order: the optimizer's state follows it), the layout recognised and
    extras (``obs_scale`` when the source stored one).
    """
    sd = _strip_wrappers(sd)
    layout = _layout(list(sd))
    if layout == "fiberlab":
        mapping, extras = {k: k for k in sd}, {}
    elif layout == "pufferlib_atari":
        mapping, extras = _map_pufferlib(sd)
    else:
        mapping, extras = _map_metta(sd)
    key_map = {k: mapping[k] for k in sd if k in mapping}
    return {v: sd[k] for k, v in key_map.items()}, key_map, layout, extras


# --------------------------------------------------------------------------- widths from shapes
def _indexed(sd: Mapping[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    found = {int(m[1]): v for k, v in sd.items() if (m := re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", k))}
    return [found[i] for i in sorted(found)]


def _conv_out(size: tuple[int, int], geometry: list[tuple[int, int]]) -> tuple[int, int] | None:
    h, w = size
    for k, s in geometry:
        if h < k or w < k:
            return None
        h, w = (h - k) // s + 1, (w - k) // s + 1
    return h, w


def infer_policy_config(sd: Mapping[str, torch.Tensor], obs_scale: list[float] | None = None) -> tuple[dict[str, Any], list[str]]:
    """A fiberlab :class:`~fiberlab.config.PolicyConfig` dict read off fiberlab-named weights.

    Returns the config and notes about what could only be guessed (obs size, obs_scale).
    """
    from fiberlab.policies import ARCHITECTURES

    notes: list[str] = []
    convs, linears = _indexed(sd, "encoder.0."), _indexed(sd, "encoder.1.")
    actor, critic = _indexed(sd, "actor."), _indexed(sd, "critic.")
    if "core.lstm.weight_hh_l0" not in sd or "core.lstm.weight_ih_l0" not in sd:
        raise MigrationError("no LSTM weights: every fiberlab policy has a recurrent core")
    if any(k.startswith("core.lstm.") and re.search(r"_l[1-9]\d*$", k) for k in sd):
        raise MigrationError("a multi-layer LSTM: fiberlab's lstm core has one layer")
    if not actor or not critic:
        raise MigrationError("no actor or no critic weights")
    if any(w.dim() != 2 for w in linears + actor + critic):
        raise MigrationError("a linear layer whose weight is not 2-D")
    core_hidden = int(sd["core.lstm.weight_hh_l0"].shape[1])
    lstm_in = int(sd["core.lstm.weight_ih_l0"].shape[1])
    if int(critic[-1].shape[0]) != 1:
        raise MigrationError(f"the critic's last layer has {critic[-1].shape[0]} outputs, not 1")
    cfg: dict[str, Any] = {
        "core": "lstm",
        "linear": [int(w.shape[0]) for w in linears],
        "core_hidden": core_hidden,
        "actor_hidden": [int(w.shape[0]) for w in actor[:-1]],
        "critic_hidden": [int(w.shape[0]) for w in critic[:-1]],
        "num_actions": int(actor[-1].shape[0]),
    }
    flat = int(linears[0].shape[1]) if linears else lstm_in
    if not convs:
        cfg.update(name="mlp_lstm", conv_channels=[], obs_shape=[flat])  # fiberlab's vector envs are flat
    else:
        if any(w.dim() != 4 for w in convs):
            raise MigrationError("a convolution whose weight is not 4-D")
        kernels = [int(w.shape[-1]) for w in convs]
        name = next((n for n, a in ARCHITECTURES.items() if a.conv_geometry and [k for k, _ in a.conv_geometry] == kernels), None)
        if name is None:
            raise MigrationError(f"convolution kernels {kernels} match no fiberlab architecture (fast: [5, 3], atari: [8, 4, 3])")
        channels = [int(w.shape[0]) for w in convs]
        geometry = ARCHITECTURES[name].conv_geometry
        squares = [(n, n) for n in range(geometry[0][0], 257)]
        size = None
        for cand in KNOWN_SPATIAL.get(name, []) + squares:
            out = _conv_out(cand, geometry)
            if out is not None and channels[-1] * out[0] * out[1] == flat:
                size = cand
                break
        if size is None:
            raise MigrationError(f"cannot infer the observation size: no input size gives {flat} features after the convolutions")
        if size not in KNOWN_SPATIAL.get(name, []):
            notes.append(f"observation size {size[0]}x{size[1]} inferred from the flatten width {flat}; another size may fit as well")
        cfg.update(name=name, conv_channels=channels, obs_shape=[int(convs[0].shape[1]), *size])
    if obs_scale is None and cfg["name"] == "atari":
        obs_scale = [255.0]  # fiberlab's and PufferLib's Atari pixels are divided by 255
    if obs_scale is None:
        notes.append("obs_scale is not stored in the weights: 1.0 assumed; set the env's divisors if it had any")
    elif len(obs_scale) > 1 and (not convs or len(obs_scale) != cfg["obs_shape"][0]):
        notes.append(f"obs_scale of {len(obs_scale)} values does not match {cfg['obs_shape'][0]} channels: dropped")
        obs_scale = None
    cfg["obs_scale"] = obs_scale
    return cfg, notes


