"""Sweeps: a grid of runs (variants x seeds) from one spec file, run by an existing engine (a local
process pool, Ray, SkyPilot managed jobs), resumable, and reported with confidence intervals.

From Python, e.g. at the bottom of a recipe module::

    if __name__ == "__main__":
        from fiberlab.sweep import SweepSpec, run_sweep
        run_sweep(SweepSpec(name="cells", base={"recipe": "demo"}, axes={"policy.core_hidden": [64, 128]}, seeds=[1, 2, 3]))

The CLI is ``fiberlab sweep run SPEC.yaml | status SWEEP | report SWEEP``; docs/sweeps.md.
"""
from fiberlab.sweep.runner import plan_sweep, run_sweep, sweep_status
from fiberlab.sweep.spec import SweepSpec, load_spec, parse_spec

__all__ = ["SweepSpec", "load_spec", "parse_spec", "plan_sweep", "run_sweep", "sweep_status"]
