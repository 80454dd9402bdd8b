"""The settings of Compressed Algorithm Distillation, as two flat validated configs.

Flat on purpose: the keys are the ones a researcher coming from DICP or the compression guide
already uses in their YAML (``tf_n_embd``, ``n_transit``, ``lr``, ``on_policy_threshold``, ...), so
``fiberlab ad train DATASET lr=3e-4 tf_n_layer=2`` reads like their config files. Overrides go
through :func:`fiberlab.config.apply_overrides` (one line naming a bad key or value, exit 2).

Defaults and where they come from (``../shared/specs/algorithm_distillation.md``):
- :class:`CollectConfig`: DICP's source PPO (SB3 ``MlpPolicy`` 64x64 tanh, lr 3e-4, n_steps 20,
  batch 50, 20 epochs, gamma 0.99, lambda 0.95, clip 0.2, entropy 0), 100 streams x 100 k steps a
  goal, seed = ``alg_seed`` + goal index.
- :class:`ADConfig`: DICP's AD for Darkroom (width 32, 4 layers, 4 heads, SwiGLU 128, RoPE,
  pre-norm RMSNorm, dropout 0.1, context 80), AdamW lr 1e-2 betas (0.9, 0.99) weight decay 0.01,
  cosine, 50 k steps, batch 512, clip 1.0; the guide's segment rule (threshold 0.7, window 10).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fiberlab.config import StrictModel

EnvName = Literal["darkroom", "darkroom_permuted", "dark_key_to_door"]
MaskRule = Literal["lookahead", "causal"]
ModelKind = Literal["ad", "compressed", "random_markers"]


class CollectConfig(StrictModel):
    """``fiberlab ad collect``: PPO learning histories for every goal of a task family."""

    env: EnvName = "darkroom"
    alg_seed: int = 0  # goal g's learner is seeded alg_seed + g (DICP)
    goals: list[int] | None = None  # None: every goal of the env (81 for darkroom)
    n_stream: int = Field(100, ge=1)  # parallel copies of one goal, one learner per goal
    steps_per_goal: int = Field(100_000, ge=1)  # agent steps a goal, over all its streams
    goals_per_batch: int = Field(81, ge=1)  # learners stepped and updated together; also the resume unit
    # PPO (SB3 defaults as DICP uses them)
    hidden: list[int] = [64, 64]  # separate tanh MLPs for the actor and the critic
    learning_rate: float = Field(3e-4, gt=0)
    n_steps: int = Field(20, ge=1)  # steps per stream per rollout: one Darkroom episode
    batch_size: int = Field(50, ge=1)  # minibatch size
    n_epochs: int = Field(20, ge=1)
    gamma: float = Field(0.99, ge=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_range: float = Field(0.2, gt=0)
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    adam_eps: float = Field(1e-5, gt=0)
    # the segment mask stored with the file (it can be recomputed at load time with other values)
    on_policy_threshold: float = Field(0.7, ge=0, le=1)
    compression_window: int = Field(10, ge=1)
    mask_rule: MaskRule = "lookahead"
    out_dir: str = "datasets"
    device: str = "cpu"
    torch_threads: int = Field(1, ge=1)
    progress: Literal["auto", "rich", "plain", "none"] = "auto"


class ADConfig(StrictModel):
    """``fiberlab ad train``: one AD-family transformer distilled from a history file."""

    model: ModelKind = "ad"  # ad: no markers; compressed: learned start/end vectors; random_markers: the control
    seed: int = 0
    run: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # default: <env>_<model>_seed<seed>
    train_dir: str = "./train_dir/ad"
    device: str = "auto"
    torch_threads: int = Field(2, ge=1)
    env_split_seed: int = 0  # random.seed(s); random.shuffle(goals); the last 10 % are test goals
    # the transformer (DICP's keys)
    tf_n_embd: int = Field(32, ge=1)
    tf_n_head: int = Field(4, ge=1)
    tf_n_layer: int = Field(4, ge=1)
    tf_dim_feedforward: int = Field(128, ge=1)
    tf_dropout: float = Field(0.1, ge=0, lt=1)
    n_transit: int = Field(80, ge=2)  # context: n_transit - 1 transitions + the query token
    # training
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-2, gt=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(0, ge=0)
    train_steps: int = Field(50_000, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    eval_interval: int = Field(1000, ge=1)  # steps between test-set evaluations (best checkpoint)
    # segments (recomputed from action_probs at load time, so they can be swept without collecting)
    on_policy_threshold: float = Field(0.7, ge=0, le=1)
    compression_window: int = Field(10, ge=1)
    mask_rule: MaskRule = "lookahead"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ADConfig":
        if self.tf_n_embd % self.tf_n_head or (self.tf_n_embd // self.tf_n_head) % 2:
            raise ValueError(f"tf_n_embd={self.tf_n_embd} must split into tf_n_head={self.tf_n_head} heads of even width (RoPE)")
        return self

    def run_name(self, env: str = "darkroom") -> str:
        """The run folder's name: one per (env, model, seed), so different models never share one."""
        return self.run or f"{env}_{self.model}_seed{self.seed}"
