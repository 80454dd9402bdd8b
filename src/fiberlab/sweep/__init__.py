"""Sweeps: a grid of runs (variants x seeds) from one spec file, run by an existing engine,
resumable, and reported with confidence intervals. See docs/sweeps.md."""
