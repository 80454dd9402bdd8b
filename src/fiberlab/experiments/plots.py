"""Figures drawn from run folders (never from live objects, so any old run can be re-plotted)."""
from __future__ import annotations

from pathlib import Path

from fiberlab.atomic import save_figure_atomic
from fiberlab.rl.logging import read_metrics


def plot_learning_curve(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Mean episode return against agent steps from ``metrics.jsonl``; writes a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = [r for r in read_metrics(run_dir) if r.get("episode_return") is not None]
    out = Path(out) if out else run_dir / "learning_curve.png"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if rows:
        steps = [r["agent_step"] for r in rows]
        rets = [r["episode_return"] for r in rows]
        ax.plot(steps, rets, color="tab:blue", alpha=0.35, lw=1, label="per epoch")
        k = max(1, len(rets) // 20)
        smooth = [sum(rets[max(0, i - k + 1) : i + 1]) / len(rets[max(0, i - k + 1) : i + 1]) for i in range(len(rets))]
        ax.plot(steps, smooth, color="tab:blue", lw=2, label=f"moving mean ({k} epochs)")
        ax.legend(loc="lower right")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("mean episode return")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure_atomic(fig, out)
