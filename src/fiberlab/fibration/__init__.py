"""Fibration collapse: find groups of neurons receiving equivalent input (fibers), merge them."""
from fiberlab.fibration.collapse import collapse, collapsed_config
from fiberlab.fibration.fibers import Fibers, Thresholds, find_fibers
from fiberlab.fibration.graph import Layer, layer_graph
from fiberlab.fibration.target import Target, TargetResult, search_thresholds

__all__ = ["Fibers", "Layer", "Target", "TargetResult", "Thresholds", "collapse", "collapsed_config", "find_fibers", "layer_graph", "search_thresholds"]
