"""Experiments: plots and reports built from run folders."""
