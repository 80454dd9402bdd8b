"""popgym.<EnvName>: any POPGym memory task with the ``mlp_lstm`` policy.

PPO settings: CleanRL's LSTM defaults (gamma 0.99, lambda 0.95, clip 0.2, 4 epochs), with BPTT 16
and Adam 1e-3 as POPGym's own baselines use short segments and a larger step size for its small models.
"""
from fiberlab.config import EnvConfig, PolicyConfig, TrainConfig, TrainerConfig

DESCRIPTION = "any popgym memory task by name (e.g. popgym.RepeatPreviousEasy), mlp_lstm policy"


def config(env_name: str = "RepeatPreviousEasy") -> TrainConfig:
    from fiberlab.envs.popgym import popgym_env_names

    if env_name not in popgym_env_names():
        raise ValueError(f"unknown popgym env {env_name!r}: allowed are {', '.join(popgym_env_names())}")
    return TrainConfig(
        env=EnvConfig(name=f"popgym.{env_name}", num_envs=64),
        policy=PolicyConfig(name="mlp_lstm"),
        trainer=TrainerConfig(total_timesteps=1_000_000, bptt_horizon=16, minibatch_size=256, update_epochs=4, learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, ent_coef=0.01, checkpoint_interval=100),
    )
