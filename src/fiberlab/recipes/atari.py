"""atari.<Game>: any ALE game with PufferLib's Atari policy and its dev beam_rider PPO settings.

Defaults from PufferLib's beam_rider config (checkpoints_and_training.md section 4): gamma 0.9906,
lambda 0.1453, clip 0.5, vf 0.99, ent 0.011, grad norm 0.94, lr 4.1e-4, 3 epochs; BPTT 16 here
instead of 2 so the LSTM sees history, and fewer envs (16) for a 2-core machine.
"""
from fiberlab.config import EnvConfig, PolicyConfig, TrainConfig, TrainerConfig

DESCRIPTION = "any ALE game by name (e.g. atari.Breakout), PufferLib Atari policy, 1x105x80 frames"


def config(game: str = "BeamRider") -> TrainConfig:
    from fiberlab.envs.atari import ale_game_id, ale_games

    if ale_game_id(game) not in ale_games():
        raise ValueError(f"unknown Atari game {game!r}: allowed are ALE ROM ids such as {', '.join(ale_games()[:8])}, ...")
    return TrainConfig(
        env=EnvConfig(name=f"atari.{game}", num_envs=16),
        policy=PolicyConfig(name="atari"),
        trainer=TrainerConfig(
            total_timesteps=10_000_000, bptt_horizon=16, minibatch_size=1024, update_epochs=3,
            learning_rate=4.1e-4, gamma=0.9906, gae_lambda=0.1453, clip_coef=0.5, vf_coef=0.99,
            ent_coef=0.011, max_grad_norm=0.94, checkpoint_interval=50,
            torch_threads=None,  # conv policies act on every core too (docs/benchmarks.md, issue 16: +5-35 % SPS)
        ),
    )
