"""Checkpoints: safe (no pickle), self-describing safetensors files."""
from fiberlab.checkpoint.format import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)

load = load_checkpoint
save = save_checkpoint

__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "load", "load_checkpoint", "read_manifest", "save", "save_checkpoint"]
