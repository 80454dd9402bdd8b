"""arena: mettagrid's multi-agent arena with shaped rewards (like arena_basic_easy_shaped)."""
from fiberlab.config import TrainConfig
from fiberlab.recipes._mettagrid import mettagrid_config

DESCRIPTION = "mettagrid arena, 24 agents per map, shaped rewards (arena_basic_easy_shaped), Fast policy"


def config() -> TrainConfig:
    return mettagrid_config("arena", num_envs=2, num_agents=24, max_steps=1000)
