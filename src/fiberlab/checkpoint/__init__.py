"""Checkpoints: safe (no pickle), self-describing, validated and checksummed safetensors files."""
from fiberlab.checkpoint.reader import check_file, examine
from fiberlab.checkpoint.format import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
)
from fiberlab.checkpoint.manifest import Manifest

load = load_checkpoint
save = save_checkpoint

__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "Manifest", "check_file", "examine", "load", "load_checkpoint", "read_manifest", "save", "save_checkpoint"]
