"""Algorithm Distillation and its "compressed" variant on Darkroom (docs/distill.md).

The loop a researcher runs: collect PPO learning histories for every goal (batched: all goals'
learners in one forward and one backward pass), mark confident stretches of them as segments,
distill the histories into a causal transformer (AD; CompressedAD with learned start/end marker
vectors; a random-marker control), evaluate it in context on held-out goals, and compare.

Modules, each with one job (imports go down this list, never up; the package uses ``envs``,
``policies``, ``rl`` and ``checkpoint`` and nothing above them):

- ``config``: the flat, validated settings (DICP's keys);
- ``histories``: the HDF5 learning-history file (DICP's schema + action_probs, compression_mask);
- ``batched_ppo``: PPO for many independent learners at once (stacked parameters over a goal axis);
- ``collect``: ``fiberlab ad collect``, resumable per goal, the file complete or absent;
- ``segments``: the mask rules (lookahead, causal), marker positions, the random control;
- ``segment_report``: ``fiberlab ad stats`` and ``fiberlab ad plot-segments``;
- ``model``: the AD transformer and its marker vectors;
- ``windows``: training windows gathered by index arithmetic;
- ``ad_checkpoint``: the model in fiberlab's safe checkpoint format;
- ``train``: ``fiberlab ad train``;
- ``in_context``: ``evaluate_in_context`` and marker modes at inference;
- ``compare`` and ``pipeline``: ``fiberlab ad compare`` and ``fiberlab pipeline ad darkroom``.

Importing the package imports nothing heavy; import the module you need.
"""
