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
