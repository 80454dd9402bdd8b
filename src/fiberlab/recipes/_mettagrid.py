"""Shared PPO settings of the mettagrid recipes (Metta's Fast policy).

Metta trains with 4096-agent batches, BPTT 256 and schedule-free AdamW at 7.4e-3
(checkpoints_and_training.md section 4); on 2 CPU cores we keep its gamma/lambda/clip/vf/ent and
grad norm but use Adam 1e-3, BPTT 32 and small batches.
"""
from fiberlab.config import EnvConfig, MettagridEnvConfig, PolicyConfig, TrainConfig, TrainerConfig


def mettagrid_config(name: str, num_envs: int, **mettagrid: object) -> TrainConfig:
    return TrainConfig(
        env=EnvConfig(name=f"mettagrid.{name}", num_envs=num_envs, mettagrid=MettagridEnvConfig(**mettagrid)),
        policy=PolicyConfig(name="fast"),
        trainer=TrainerConfig(
            total_timesteps=50_000_000, bptt_horizon=32, minibatch_size=2048, update_epochs=1,
            learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, clip_coef=0.22, vf_coef=0.497,
            ent_coef=0.01, max_grad_norm=0.5, checkpoint_interval=50,
            torch_threads=None,  # conv policies act on every core too (docs/benchmarks.md, issue 16: +5-35 % SPS)
        ),
    )
