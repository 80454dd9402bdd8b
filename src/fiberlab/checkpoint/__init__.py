"""Checkpoints: safe (no pickle), self-describing, validated and checksummed safetensors files.

Modules, each with one job (imports go one way, down this list):

- ``base``: errors, format constants, checksums, the version check (imports no sibling);
- ``manifest``: the header as typed, validated models;
- ``versions``: the chain of format upgrades;
- ``compression_codecs``, ``compression_container``, ``compression``: compressed files;
- ``format``: the file as bytes: ``save``, reading the header and the tensors as stored;
- ``compat``: does a checkpoint fit an environment (levels, remapping);
- ``reader``: examine and ``load`` (everything checked before anything is allocated);
- ``legacy_layouts``, ``migrate_sources``, ``migrate_convert``, ``migrate``: ``fiberlab ckpt migrate``.
"""
from fiberlab.checkpoint import compression
from fiberlab.checkpoint.base import FORMAT_VERSION, CheckpointError
from fiberlab.checkpoint.format import read_manifest, save
from fiberlab.checkpoint.manifest import Manifest
from fiberlab.checkpoint.reader import Checkpoint, check_file, examine, load

__all__ = [
    "FORMAT_VERSION", "Checkpoint", "CheckpointError", "Manifest", "check_file", "compression", "examine", "load",
    "read_manifest", "save",
]
