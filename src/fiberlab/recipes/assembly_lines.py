"""assembly_lines: mettagrid's memory task (a chain of stations, cortex.md section 6).

Knobs: ``env.mettagrid.chain_length`` (1-6), ``num_sinks`` (0-2), ``room_size``
(tiny/small/medium/large), ``terrain`` (none/sparse/balanced/dense).
"""
from fiberlab.config import TrainConfig
from fiberlab.recipes._mettagrid import mettagrid_config

DESCRIPTION = "mettagrid assembly_lines (chain of stations; needs memory), difficulty knobs env.mettagrid.*"


def config() -> TrainConfig:
    return mettagrid_config("assembly_lines", num_envs=32, chain_length=3, num_sinks=1, room_size="small", terrain="none", max_steps=256)
