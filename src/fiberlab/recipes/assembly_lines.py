"""assembly_lines: mettagrid's memory task (a chain of stations, cortex.md section 6).

``assembly_lines``: one fixed task, knobs ``env.mettagrid.chain_length`` (1-6), ``num_sinks``
(0-2), ``room_size`` (tiny/small/medium/large/xlarge), ``terrain`` (none/sparse/balanced/dense),
``max_steps``. ``assembly_lines.<curriculum>`` (``level_0`` ... ``full``, docs/environments.md):
the same PPO settings with ``env.mettagrid.curriculum`` set, so every episode draws its task from
that curriculum and lasts Metta's ``4 * avg_hop * (num_sinks + 10 * chain_length)`` steps.
"""
from fiberlab.config import TrainConfig
from fiberlab.recipes._mettagrid import mettagrid_config

DESCRIPTION = "mettagrid assembly_lines (chain of stations; needs memory), difficulty knobs env.mettagrid.*"
FAMILY_DESCRIPTION = "assembly_lines with a named curriculum: level_0, level_1, level_2, longer_chains, terrain_1..4, full"


def config(curriculum: str | None = None) -> TrainConfig:
    """The plain recipe (``curriculum`` None) or ``assembly_lines.<curriculum>``; a name outside
    the table is a :class:`ValueError` naming the allowed ones (the recipe loader makes it a
    ConfigError)."""
    if curriculum is None:
        return mettagrid_config("assembly_lines", num_envs=32, chain_length=3, num_sinks=1, room_size="small",
                                terrain="none", max_steps=256)
    from fiberlab.envs.mettagrid.curricula import curriculum_of

    curriculum_of(curriculum)  # the one-line error for a bad name
    return mettagrid_config("assembly_lines", num_envs=32, curriculum=curriculum)
