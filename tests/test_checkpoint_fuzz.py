"""Mutated real checkpoints, read every way fiberlab reads them (see tests/fuzz_checkpoints.py).

The suite runs a few hundred cases; the long run is ``python tests/fuzz_checkpoints.py --cases
10000``. Either way: no exception other than a one-line CheckpointError, nothing altered ever
loaded, nothing half-written left behind.
"""
from __future__ import annotations

import os

from fuzz_checkpoints import run

CASES = int(os.environ.get("FIBERLAB_FUZZ_CASES", "400"))


def test_mutated_checkpoints_are_refused_or_load_as_the_original(tmp_path):
    tally = run(range(CASES), tmp_path)
    failures = sorted(k for k in tally if k.startswith("failure"))
    assert not failures, failures[:10]
    assert sum(tally.values()) == CASES and tally["refused"] > CASES // 2  # the mutations did bite


def test_the_fuzzer_catches_a_loader_that_skips_verification(tmp_path, monkeypatch):
    """The check has teeth: with the checksum ignored, edited manifests load and are caught."""
    import fiberlab.checkpoint.reader as reader

    real = reader.read_verified_tensors
    monkeypatch.setattr(reader, "read_verified_tensors", lambda ex, verify=True: real(ex, False))
    tally = run(range(200), tmp_path)
    assert any(k.startswith("failure") and "altered" in k for k in tally)
