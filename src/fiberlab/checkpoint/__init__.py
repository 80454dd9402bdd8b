"""Checkpoints: safe (no pickle), self-describing, validated and checksummed safetensors files."""
from fiberlab.checkpoint.reader import check_file, examine
from fiberlab.checkpoint.format import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load,
    read_manifest,
    save,
)
from fiberlab.checkpoint.manifest import Manifest


__all__ = ["FORMAT_VERSION", "Checkpoint", "CheckpointError", "Manifest", "check_file", "examine", "load", "read_manifest", "save"]
