"""demo: POPGym RepeatPreviousEasy with an LSTM policy, the built-in default.

Why this task: it is a published memory benchmark (Morad et al. 2023) whose curve everyone reads
the same way: a memoryless or random policy scores about -0.5 (right one time in four, reward
+-1/48 per step), an agent that remembers the last 4 cards scores 1.0. It needs the recurrent
state, so it exercises truncated BPTT, and it learns in a few minutes on 2 cores.
"""
from fiberlab.config import TrainConfig
from fiberlab.recipes import popgym

DESCRIPTION = "POPGym RepeatPreviousEasy (recall the card 4 steps back), mlp_lstm, learns in minutes on 2 cores"


def config() -> TrainConfig:
    cfg = popgym.config("RepeatPreviousEasy")
    return cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"total_timesteps": 1_000_000})})
