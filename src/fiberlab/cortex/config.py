"""Serialisable configs: every cell, block, column and stack is rebuilt from its pydantic config.

Why pydantic: a checkpoint stores ``StackConfig.model_dump()`` in its manifest, and a bad override
fails with one line naming the field. ``extra="forbid"`` catches typos such as ``mem_lenn``.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CortexConfig(BaseModel):
    """Base of every cortex config: unknown fields are an error; copies are cheap."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class CellConfig(CortexConfig):
    """Base of the cell configs: ``d_hidden`` is the width the cell reads and writes."""

    d_hidden: int = Field(128, ge=1)


def same_width(parts: list, what: str, container: str) -> list:
    """Validate that ``parts`` (configs with ``d_hidden``) are non-empty and share one width.

    Why: a column's experts and a stack's layers all read and write the same residual stream.
    """
    if not parts:
        raise ValueError(f"a {container} needs at least one {what}")
    widths = sorted({p.d_hidden for p in parts})
    if len(widths) > 1:
        raise ValueError(f"the {what}s of a {container} must share d_hidden, got {widths}")
    return parts
