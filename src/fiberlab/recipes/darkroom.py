"""darkroom: Darkroom (DICP's 9x9 grid, 81 goals, horizon 20) for fiberlab's recurrent PPO.

Every env draws a train goal at random each episode and the goal is never observed, so this is the
meta-RL version of the task: a memoryless policy can only learn the average goal, an LSTM can learn
to search within an episode. It is the RL^2-style neighbour of Algorithm Distillation (which learns
ACROSS episodes in context: ``fiberlab ad``, docs/distill.md). ``env.name=darkroom.darkroom_permuted``
or ``darkroom.dark_key_to_door`` picks a variant.

PPO settings: the popgym recipe's (CleanRL LSTM defaults, BPTT 16, Adam 1e-3), 64 envs, 2 M steps.
"""
from fiberlab.config import EnvConfig, PolicyConfig, TrainConfig, TrainerConfig

DESCRIPTION = "Darkroom (9x9, 81 hidden goals, horizon 20), mlp_lstm policy; the AD tasks: see fiberlab ad"


def config() -> TrainConfig:
    return TrainConfig(
        env=EnvConfig(name="darkroom.darkroom", num_envs=64),
        policy=PolicyConfig(name="mlp_lstm"),
        trainer=TrainerConfig(total_timesteps=2_000_000, bptt_horizon=16, minibatch_size=256, update_epochs=4,
                              learning_rate=1e-3, gamma=0.99, gae_lambda=0.95, ent_coef=0.01, checkpoint_interval=100),
    )
