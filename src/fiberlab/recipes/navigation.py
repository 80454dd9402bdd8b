"""navigation: mettagrid's navigation task (find hearts on a random map)."""
from fiberlab.config import TrainConfig
from fiberlab.recipes._mettagrid import mettagrid_config

DESCRIPTION = "mettagrid navigation, random maps with hearts to reach, Fast policy"


def config() -> TrainConfig:
    return mettagrid_config("navigation", num_envs=4, num_agents=4, max_steps=1000)
