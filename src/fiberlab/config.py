"""Pydantic configuration of a training run, and Metta-style ``key.sub=value`` overrides.

Every model forbids unknown fields, so a typo in an override is an error naming the key and the
allowed ones rather than a silently ignored setting.
"""
from __future__ import annotations

import json
from typing import Any, Literal

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fiberlab.errors import BadInput


class ConfigError(BadInput):
    """A bad recipe name, override key or value: the message is one line meant for the user."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- environments
class AtariEnvConfig(StrictModel):
    """ale-py ``AtariVectorEnv`` settings. Defaults follow PufferLib's Atari setup.

    ``obs_mode='puffer'``: one 105x80 grayscale frame (the screen downscaled by 2), what
    PufferLib's Atari policy expects. ``obs_mode='84x84'``: the DQN/CleanRL 84x84 grayscale
    resize, stacked ``frame_stack`` times.
    """

    obs_mode: Literal["puffer", "84x84"] = "puffer"
    frame_stack: int = Field(1, ge=1, le=16)
    frameskip: int = Field(4, ge=1)
    repeat_action_probability: float = Field(0.0, ge=0.0, le=1.0)  # PufferLib builds with 0.0
    clip_rewards: bool = True  # training reward only; reported returns are always unclipped
    episodic_life: bool = False
    noop_max: int = Field(30, ge=0)
    max_episode_frames: int = Field(108_000, ge=1)
    num_threads: int = Field(0, ge=0)  # 0: one per core


class MettagridEnvConfig(StrictModel):
    """mettagrid 0.26.22 settings; the ``assembly_lines`` knobs follow cortex.md section 6.

    ``curriculum`` (assembly_lines only): None runs the one task the fixed knobs below describe,
    for ``max_steps`` steps. A name draws every episode's chain length, sinks, room size and
    terrain from that curriculum's lists (fiberlab.envs.mettagrid.curricula, docs/environments.md)
    and sets its length to Metta's ``4 * avg_hop * (num_sinks + 10 * chain_length)``; the fixed
    knobs and ``max_steps`` are then ignored.
    """

    num_agents: int = Field(24, ge=1)  # agents per simulation (arena/navigation)
    max_steps: int = Field(1000, ge=1)
    chain_length: int = Field(3, ge=1, le=6)
    num_sinks: int = Field(1, ge=0, le=2)
    room_size: Literal["tiny", "small", "medium", "large", "xlarge"] = "small"
    terrain: Literal["none", "sparse", "balanced", "dense"] = "none"
    curriculum: Literal[
        "level_0", "level_1", "level_2", "longer_chains", "terrain_1", "terrain_2", "terrain_3", "terrain_4", "full"
    ] | None = None


class EnvConfig(StrictModel):
    """Which environment and how many copies step together.

    ``name``: ``popgym.<EnvName>``, ``atari.<Game>``, ``mettagrid.<arena|navigation|assembly_lines>`` or ``darkroom.<darkroom|darkroom_permuted|dark_key_to_door>``.
    For multi-agent mettagrid the batch is ``num_envs * agents per env``.
    """

    name: str = "popgym.RepeatPreviousEasy"
    num_envs: int = Field(32, ge=1)
    atari: AtariEnvConfig = AtariEnvConfig()
    mettagrid: MettagridEnvConfig = MettagridEnvConfig()


# --------------------------------------------------------------------------- policies
def check_obs_scale(scale: list[float], obs_shape: list[int] | None) -> None:
    """The encoder divides observations by ``obs_scale``: finite positive numbers, one for all
    inputs or one per entry of the first observation dimension (a feature, or an image channel)."""
    if not all(math.isfinite(s) and s > 0 for s in scale):
        raise ValueError(f"obs_scale {scale[:8]} must hold finite positive numbers")
    if obs_shape and len(scale) not in (1, obs_shape[0]):
        raise ValueError(f"obs_scale has {len(scale)} values; 1 or obs_shape[0]={obs_shape[0]} are allowed")


class PolicyConfig(StrictModel):
    """A policy is (``name``, these fields). Every hidden width is a field.

    ``None`` widths take the architecture's published default (see ``fiberlab.policies``), so
    ``policy.name=atari`` alone gives PufferLib's network and ``policy.core_hidden=64`` shrinks
    only the LSTM. ``policy.core=cortex policy.pattern=AgSA`` swaps the LSTM for a cortex stack
    (``d_hidden``, ``num_layers``, ``cortex_overrides``). ``obs_shape``, ``num_actions`` and
    ``obs_scale`` are filled from the env.
    """

    name: Literal["fast", "atari", "mlp_lstm"] = "mlp_lstm"
    core: Literal["lstm", "cortex"] = "lstm"  # lstm: one nn.LSTM of core_hidden; cortex: a fiberlab.cortex stack
    # core=cortex only (errors with core=lstm). None takes cortex.md's default policy: pattern "Ag,A,S"
    # (AGaLiTe, Axon and sLSTM experts in every layer), num_layers 2, d_hidden 128.
    pattern: str | list[str] | None = None  # see fiberlab.cortex.pattern; a list gives one entry per layer
    d_hidden: int | None = Field(None, ge=1)  # the stack's width: the heads read d_hidden features
    num_layers: int | None = Field(None, ge=1)
    cortex_overrides: dict[str, dict[str, Any]] | None = None  # by config class, e.g. {"XLConfig": {"mem_len": 16}}
    conv_channels: list[int] | None = None
    linear: list[int] | None = None
    core_hidden: int | None = Field(None, ge=1)
    actor_hidden: list[int] | None = None
    critic_hidden: list[int] | None = None
    obs_shape: list[int] | None = None
    num_actions: int | None = Field(None, ge=1)
    obs_scale: list[float] | None = None

    @model_validator(mode="after")
    def _scale_fits_shape(self) -> "PolicyConfig":
        if self.obs_scale is not None:
            check_obs_scale(self.obs_scale, self.obs_shape)
        return self


# --------------------------------------------------------------------------- trainer
class TrainerConfig(StrictModel):
    """PPO hyperparameters. Recipe modules set their own and cite where they come from."""

    total_timesteps: int = Field(2_000_000, ge=1)
    bptt_horizon: int = Field(16, ge=1)
    minibatch_size: int = Field(256, ge=1)  # agent steps; rounded to whole BPTT segments
    update_epochs: int = Field(4, ge=1)
    learning_rate: float = Field(2.5e-4, gt=0)
    anneal_lr: bool = True
    gamma: float = Field(0.99, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_coef: float = Field(0.2, gt=0)
    clip_vloss: bool = True
    vf_coef: float = Field(0.5, ge=0)
    ent_coef: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    norm_adv: bool = True
    # Early stop of an update when a minibatch's approx KL to the rollout policy exceeds this
    # (None: off, the default, as in CleanRL and SB3; SB3 users often set 0.01 - 0.05).
    target_kl: float | None = Field(None, gt=0)
    adam_eps: float = Field(1e-5, gt=0)
    # Truncated BPTT (docs/training.md, "Truncated BPTT"): what a training segment starts from and
    # what gradient may cross its start. No gradient ever flows through the carried state itself.
    pass_state: bool = True  # segment starts from the state stored at rollout time (else zeros)
    reset_in_training: bool = True  # zero the state at episode starts inside a segment
    # Axon eligibility traces: the RTUs' own parameters (decay, phase, input weights) get the
    # gradient of the segment's loss through the stored state's dependence on them (RTRL for a
    # diagonal recurrence), while the state itself stays detached. Off: strict truncation.
    axon_traces: bool = False
    # Shorthand for strict TBPTT: stored detached state, resets applied inside segments, no traces.
    # Setting it with a contradicting pass_state / reset_in_training / axon_traces is an error.
    strict_tbptt: bool = False
    # bf16: acting and the PPO update run the encoder and the heads' hidden layers under autocast
    # (bf16 matrix units: AVX512-BF16 or AMX CPUs, GPUs); the memory core, the heads' output layers,
    # weights, optimizer state, losses and evaluation stay fp32. auto: bf16 where the device has native bf16 and the
    # architecture record says it pays (``bf16_update``: the conv policies), else fp32
    # (fiberlab.devices.resolve_precision; docs/training.md, "Precision").
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    checkpoint_interval: int = Field(10, ge=1)  # epochs
    # Torch threads while acting (rollout) and during the PPO update (no env is stepping then).
    # None (auto): the cores this process may use, split between DDP ranks on one machine
    # (fiberlab.runtime.trainer_threads); update_threads is never below torch_threads. Acting on
    # one thread is the default (small per-step matrices: more threads cost more than they give);
    # the conv recipes act on all cores. Runs launched side by side (pipeline --jobs, sweeps) get
    # explicit shares from their launcher.
    torch_threads: int | None = Field(1, ge=1)
    update_threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _strict_tbptt(self) -> "TrainerConfig":
        """``strict_tbptt`` means pass_state, reset_in_training and no axon_traces; a contradicting
        value is refused rather than silently overridden (pass_state and reset_in_training already
        default to it)."""
        if self.strict_tbptt:
            wrong = [f"{k}={str(v).lower()}" for k, v, want in (
                ("pass_state", self.pass_state, True), ("reset_in_training", self.reset_in_training, True),
                ("axon_traces", self.axon_traces, False)) if v != want]
            if wrong:
                raise ValueError(f"strict_tbptt=true contradicts {', '.join(wrong)}: strict TBPTT is pass_state=true, reset_in_training=true, axon_traces=false")
        return self


class WandbConfig(StrictModel):
    enabled: bool = False
    project: str = "fiberlab"
    mode: Literal["online", "offline"] = "offline"
    group: str | None = None  # a sweep sets its name here, so W&B groups its runs
    tags: list[str] = []  # a sweep sets the cell's axis values and seed here


class TrainConfig(StrictModel):
    """The whole resolved configuration of a run, saved as ``train_dir/<run>/config.json``."""

    recipe: str = "demo"
    run: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # generated from the recipe name and time when not given
    train_dir: str = "./train_dir"
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = True  # False: start the run over, deleting its old checkpoints and metrics
    tensorboard: bool = True
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    env: EnvConfig = EnvConfig()
    policy: PolicyConfig = PolicyConfig()
    trainer: TrainerConfig = TrainerConfig()
    wandb: WandbConfig = WandbConfig()


# --------------------------------------------------------------------------- overrides
def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _parse_value(raw: str) -> Any:
    """Values are JSON when they parse as JSON (numbers, true/false, lists), else strings."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def override_strings(overrides: Any) -> list[str]:
    """Overrides in any of the forms the Python API takes, as the CLI's ``key=value`` strings.

    ``None``; a mapping of dotted names to Python values (``{"trainer.total_timesteps": 1e5,
    "run": "exp1"}``: each value is written as JSON, so it parses back to itself, a string as a
    string); or an iterable of ``"key=value"`` strings, read as the CLI reads them. One parser
    (:func:`apply_overrides`) then reads them all.
    """
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, dict) or hasattr(overrides, "items"):
        out = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise ConfigError(f"bad override key {key!r}: dotted names such as 'trainer.total_timesteps' are allowed")
            try:
                out.append(f"{key}={json.dumps(value)}")
            except (TypeError, ValueError):
                raise ConfigError(f"bad value {value!r} for {key!r}: numbers, strings, booleans, lists and dicts are allowed") from None
        return out
    out = list(overrides)
    for item in out:
        if not isinstance(item, str):
            raise ConfigError(f"bad override {item!r}: 'key=value' strings or a dict of dotted names are allowed")
    return out


def apply_overrides(cfg: BaseModel, overrides: list[str]) -> BaseModel:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied and validated.

    Raises :class:`ConfigError` with one line naming the bad key or value and what is allowed.
    """
    data = cfg.model_dump()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.split(".")
        model: type[BaseModel] = type(cfg)
        node = data
        for depth, part in enumerate(parts):
            fields = model.model_fields
            if part not in fields:
                where = ".".join(parts[:depth]) or "the top level"
                raise ConfigError(
                    f"unknown key {key!r}: allowed keys under {where} are {', '.join(_allowed_keys(model))}"
                )
            ann = fields[part].annotation
            last = depth == len(parts) - 1
            if last:
                node[part] = _parse_value(raw)
            else:
                if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                    raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[:depth + 1])} has no sub-keys")
                model = ann
                node = node[part]
    try:
        return type(cfg).model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if not loc:  # a check across fields (a model validator): its own message names the values
            raise ConfigError(err["msg"].removeprefix("Value error, ")) from None
        value = err.get("input")
        raise ConfigError(f"bad value {value!r} for {loc!r}: {err['msg']}") from None
