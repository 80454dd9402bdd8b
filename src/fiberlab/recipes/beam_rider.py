"""beam_rider: the PufferLib demo game (``atari.BeamRider``)."""
from fiberlab.config import TrainConfig
from fiberlab.recipes import atari

DESCRIPTION = "Atari BeamRider with PufferLib's Atari policy (3,948,202 parameters)"


def config() -> TrainConfig:
    return atari.config("BeamRider")
