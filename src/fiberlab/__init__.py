"""fiberlab: train recurrent PPO agents, then make them smaller."""
__version__ = "0.1.0"
