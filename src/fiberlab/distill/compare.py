"""``fiberlab ad compare``: AD vs CompressedAD vs the random-marker control, over training seeds.

What a paper needs, measured: for every (model, inference markers) group, over its seeds, the
mean and the 95 % Student-t interval (:func:`fiberlab.intervals.t_interval`; one seed: "n/a",
never "± 0") of

- test accuracy and test loss on the held-out goals (at the best checkpoint, by test accuracy,
  and at the end of training);
- the in-context return at episodes 1, 5, 10, 25 and 50 (mean over the test goals of one seed's
  evaluation) and the area under the in-context curve, i.e. the mean return over all episodes;

next to two reference lines: the PPO source curve (per-episode mean return of the test goals'
streams in the history file: what AD distils, and what it should learn FASTER than, in episodes)
and the best possible return on the test goals (17.25 for split seed 0). Then the guide's claims
(30-50 % on-policy ratio, 75 % vs 78 % accuracy, 1.3x sample efficiency, 20 % faster convergence)
as measured rows, whichever way they go. Outputs: ``ad_compare.md``, ``ad_compare.csv``,
``ad_compare.png``/``.pdf`` (matplotlib Agg; mean line and 95 % band per group) and
``ad_compare.json`` (every number above), all written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fiberlab.atomic import save_figure_atomic, write_json_atomic, write_text_atomic
from fiberlab.errors import BadInput
from fiberlab.intervals import t_interval

MODELS = ("ad", "compressed", "random_markers")
MODEL_LABELS = {"ad": "AD", "compressed": "CompressedAD", "random_markers": "random markers"}
# the marker mode each model is evaluated with by default: what it was trained to read
DEFAULT_MARKERS = {"ad": "none", "compressed": "causal", "random_markers": "random"}
REPORT_EPISODES = (1, 5, 10, 25, 50)
EVAL_PREFIX = "in_context_"
STEM = "ad_compare"
LEVEL_FRACTION = 0.95  # "reaching" an accuracy: 95 % of a final one (see claims())
COLORS = {"ad": "tab:blue", "compressed": "tab:red", "random_markers": "tab:orange"}


def eval_file_name(goals: str, markers: str, timesteps: int) -> str:
    """The in-context evaluation of one run: ``in_context_<goals>_<markers>_T<steps>.json``."""
    return f"{EVAL_PREFIX}{goals}_{markers}_T{int(timesteps)}.json"


# --------------------------------------------------------------------------- reading runs
def is_run_dir(path: Path) -> bool:
    """An AD run folder: it has a config.json and a metrics.jsonl or checkpoints/."""
    return (path / "config.json").is_file() and ((path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir())


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run folders from run folders and/or train folders (whose direct subfolders are runs)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise BadInput(f"{p}: no such train folder or run folder")
        if is_run_dir(p):
            runs.append(p)
            continue
        found = sorted(q for q in p.iterdir() if q.is_dir() and is_run_dir(q)) if p.is_dir() else []
        if not found:
            raise BadInput(f"{p}: neither an AD run folder (config.json, metrics.jsonl) nor a folder of them")
        runs += found
    seen: set[Path] = set()
    return [r for r in runs if not (r.resolve() in seen or seen.add(r.resolve()))]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
    return rows


def _first_key(row: dict[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return None


ACC_KEYS = ("test_accuracy", "test_acc")
LOSS_KEYS = ("test_loss",)
STEP_KEYS = ("step", "train_step", "global_step")


@dataclass
class ADRun:
    """One training run and its in-context evaluations."""

    path: Path
    model: str
    seed: int
    env: str
    dataset: str | None
    config: dict[str, Any]
    steps: np.ndarray  # training steps of the test evaluations
    test_acc: np.ndarray
    test_loss: np.ndarray
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # markers -> test-goal evaluation
    train_ratio: float | None = None  # in-segment share of the train steps under the run's segment rule

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def best_index(self) -> int | None:
        """The evaluation with the highest test accuracy (the best checkpoint; the earliest on ties)."""
        return int(np.argmax(self.test_acc)) if len(self.test_acc) else None

    def summary(self) -> dict[str, float]:
        b = self.best_index
        if b is None:
            return {}
        return {"test_acc_best": float(self.test_acc[b]), "test_loss_best": float(self.test_loss[b]),
                "test_acc_final": float(self.test_acc[-1]), "test_loss_final": float(self.test_loss[-1]),
                "best_step": float(self.steps[b]), "final_step": float(self.steps[-1])}

    def steps_to(self, level: float) -> float | None:
        """The first training step whose test accuracy is >= ``level`` (None: never)."""
        hit = np.flatnonzero(self.test_acc >= level)
        return float(self.steps[hit[0]]) if hit.size else None


def read_run(path: str | Path, goals: str = "test", timesteps: int | None = None) -> ADRun:
    """A run folder's config, test metrics and in-context evaluations (of ``goals``; per marker
    mode the one with ``timesteps`` steps, default the longest present)."""
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{path / 'config.json'}: not a readable run config ({e.__class__.__name__})") from None
    inner = cfg.get("config", cfg) if isinstance(cfg.get("config"), dict) else cfg
    model = inner.get("model", "ad")
    if model not in MODELS:
        raise BadInput(f"{path}: model {model!r} is not an AD model ({', '.join(MODELS)})")
    rows = [r for r in _read_jsonl(path / "metrics.jsonl") if _first_key(r, ACC_KEYS) is not None]
    steps = np.array([float(_first_key(r, STEP_KEYS) or 0) for r in rows])
    acc = np.array([float(_first_key(r, ACC_KEYS)) for r in rows])
    loss = np.array([float(_first_key(r, LOSS_KEYS) if _first_key(r, LOSS_KEYS) is not None else math.nan) for r in rows])
    run = ADRun(path=path, model=model, seed=int(inner.get("seed", 0)), env=str(cfg.get("env") or inner.get("env") or "darkroom"),
                dataset=cfg.get("dataset") or inner.get("dataset"), config=inner, steps=steps, test_acc=acc, test_loss=loss,
                train_ratio=(cfg.get("data") or {}).get("compression_ratio") if isinstance(cfg.get("data"), dict) else None)
    found: dict[str, tuple[int, Path]] = {}
    for f in path.glob(f"{EVAL_PREFIX}{goals}_*_T*.json"):
        markers, _, t = f.stem[len(EVAL_PREFIX) + len(goals) + 1:].rpartition("_T")
        if not t.isdigit() or (timesteps is not None and int(t) != timesteps):
            continue
        if markers not in found or int(t) > found[markers][0]:
            found[markers] = (int(t), f)
    for markers, (_, f) in sorted(found.items()):
        try:
            run.evaluations[markers] = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a torn file: the pipeline evaluates it again
    return run


# --------------------------------------------------------------------------- statistics
def stat(values: Sequence[float]) -> dict[str, Any]:
    """n, mean and the 95 % t half-width of the finite values (half nan for n = 1)."""
    x = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    mean, half = t_interval(x) if x else (math.nan, math.nan)
    return {"n": len(x), "mean": mean, "half": half, "values": x}


def fmt_ci(s: dict[str, Any], decimals: int = 2, percent: bool = False) -> str:
    """``mean ± half`` with ``decimals`` decimals (percent: x100, one decimal); ``mean ± n/a`` for
    one seed (no spread can be estimated, so no interval, never "± 0"); ``—`` for no value."""
    if s["n"] == 0:
        return "—"
    k, d, unit = (100.0, 1, " %") if percent else (1.0, decimals, "")
    mean = f"{k * s['mean']:.{d}f}{unit}"
    if math.isnan(s["half"]):
        return f"{mean} ± n/a"
    return f"{mean} ± {k * s['half']:.{d}f}{unit}"


def group_label(model: str, markers: str | None) -> str:
    """``AD``, ``CompressedAD, causal markers``, ``CompressedAD, no markers``, ...: the model and
    the marker mode it was evaluated with (None: not evaluated in context)."""
    label = MODEL_LABELS.get(model, model)
    if markers is None or (model != "compressed" and markers == DEFAULT_MARKERS.get(model)):
        return label
    return f"{label}, {'no' if markers == 'none' else markers} markers"


def ppo_source_curve(history: str | Path, goals: Sequence[int]) -> dict[str, Any]:
    """The PPO learning curve of ``goals`` in the history file: per episode, the mean return over
    the goals' streams (each stream one learner's rollouts). AD distils these histories; its
    in-context curve should rise in FEWER episodes than this one."""
    from fiberlab.distill.histories import open_history

    with open_history(history) as h:
        held = [g for g in goals if g in h.goals]
        if not held:
            raise BadInput(f"{history}: holds none of the test goals {list(goals)}")
        per_goal = [h.goal(g).episode_returns().mean(axis=1) for g in held]  # [n_ep] each
        attrs = dict(h.attrs)
        n_stream = h.n_stream
    n = min(len(c) for c in per_goal)
    curve = np.mean([c[:n] for c in per_goal], axis=0)
    return {"curve": curve.tolist(), "goals": held, "n_stream": n_stream, "attrs": attrs}


# config keys that do not make runs different experiments (seeds are the repeats we average over)
NOT_A_VARIANT = ("seed", "run", "train_dir", "device", "torch_threads", "model")


def variants(runs: list[ADRun]) -> dict[Path, str]:
    """Per run, the settings that set it apart from other runs of the same model ("" when they
    all agree), e.g. ``mask_rule=causal``: such runs are separate groups, never pooled as seeds."""
    out: dict[Path, str] = {}
    for model in {r.model for r in runs}:
        rs = [r for r in runs if r.model == model]
        keys = sorted({k for r in rs for k in r.config} - set(NOT_A_VARIANT))
        varying = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in rs}) > 1]
        for r in rs:
            out[r.path] = ", ".join(f"{k}={r.config.get(k)}" for k in varying)
    return out


def _group_rows(runs: list[ADRun]) -> list[dict[str, Any]]:
    """One row per (model, variant, markers) group: per-seed values and their statistics."""
    variant = variants(runs)
    groups: dict[tuple[str, str, str | None], list[tuple[ADRun, dict[str, Any] | None]]] = {}
    for r in runs:
        if not r.evaluations:
            groups.setdefault((r.model, variant[r.path], None), []).append((r, None))
        for markers, ev in r.evaluations.items():
            groups.setdefault((r.model, variant[r.path], markers), []).append((r, ev))
    order = {m: i for i, m in enumerate(MODELS)}
    rows = []
    for (model, var, markers), members in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 9), kv[0][1], kv[0][2] != DEFAULT_MARKERS.get(kv[0][0]), kv[0][2] or "")):
        sums = [r.summary() for r, _ in members]
        label = group_label(model, markers) + (f" [{var}]" if var else "")
        row: dict[str, Any] = {"group": label, "model": model, "variant": var, "markers": markers,
                               "runs": [r.name for r, _ in members], "seeds": [r.seed for r, _ in members]}
        for key in ("test_acc_best", "test_acc_final", "test_loss_best", "test_loss_final"):
            row[key] = stat([s.get(key) for s in sums])
        curves = [np.asarray(ev["mean_per_episode"], dtype=float) for _, ev in members if ev]
        n_ep = min((len(c) for c in curves), default=0)
        row["n_episodes"] = n_ep
        for e in REPORT_EPISODES:
            row[f"return_ep{e}"] = stat([c[e - 1] for c in curves if len(c) >= e])
        row["auc"] = stat([float(np.mean(c[:n_ep])) for c in curves]) if n_ep else stat([])
        row["curves"] = [c[:n_ep].tolist() for c in curves]
        row["acc_curves"] = [(r.steps.tolist(), r.test_acc.tolist()) for r, _ in members]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the guide's claims
def claims(runs: list[ADRun], history_attrs: dict[str, Any] | None, level_fraction: float = LEVEL_FRACTION) -> list[dict[str, str]]:
    """The guide's comparison table, measured. Each row: claim, what the guide says, what we
    measured, and how.

    - compression ratio: the share of marked steps in the dataset (the file's stored mask).
    - final accuracy: final test accuracy of AD and CompressedAD.
    - sample efficiency: training steps to reach a common test-accuracy level L = 95 % of the
      lower of the two models' mean final accuracies (a level both reach); the ratio
      steps(AD) / steps(CompressedAD) (> 1: CompressedAD needs fewer steps).
    - convergence speed: steps to reach 95 % of a run's OWN final test accuracy; "x % faster" =
      1 - steps(CompressedAD) / steps(AD).
    """
    by_model: dict[str, list[ADRun]] = {}
    for r in runs:
        if len(r.test_acc):
            by_model.setdefault(r.model, []).append(r)
    out: list[dict[str, str]] = []
    if history_attrs and history_attrs.get("compression_ratio") is not None:
        a = history_attrs
        out.append({"claim": "on-policy (compression) ratio of the dataset", "guide": "30-50 %",
                    "measured": f"{100 * float(a['compression_ratio']):.1f} %",
                    "how": f"marked steps / all steps of the file's stored mask (rule {a.get('mask_rule', '?')}, threshold "
                           f"{a.get('on_policy_threshold', '?')}, window {a.get('compression_window', '?')}); every step is on-policy "
                           f"by construction: this is the share of confident stretches"})
    trained = [r for r in by_model.get("compressed", []) if r.train_ratio is not None]
    if trained:
        seg = trained[0].config
        out.append({"claim": "share of marked train steps the CompressedAD runs saw", "guide": "30-50 %",
                    "measured": f"{100 * trained[0].train_ratio:.1f} %",
                    "how": f"in-segment share of the train goals' steps under the training rule (rule {seg.get('mask_rule')}, "
                           f"threshold {seg.get('on_policy_threshold')}, window {seg.get('compression_window')}), recomputed "
                           f"from action_probs at load time"})
    ad, comp = by_model.get("ad", []), by_model.get("compressed", [])
    variant = variants(ad + comp)
    if any(variant[r.path] for r in ad + comp):
        out.append({"claim": "AD vs CompressedAD", "guide": "75 % vs 78 % accuracy, 1.3x sample efficiency, 20 % faster",
                    "measured": "n/a", "how": "the runs hold several configs of a model: compare one config of each at a time"})
        return out
    if not (ad and comp):
        out.append({"claim": "AD vs CompressedAD", "guide": "75 % vs 78 % accuracy, 1.3x sample efficiency, 20 % faster",
                    "measured": "n/a", "how": "needs finished runs of both ad and compressed"})
        return out
    final = {m: stat([r.summary()["test_acc_final"] for r in rs]) for m, rs in (("ad", ad), ("compressed", comp))}
    out.append({"claim": "final test accuracy, AD vs CompressedAD", "guide": "75 % vs 78 %",
                "measured": f"{fmt_ci(final['ad'], percent=True)} vs {fmt_ci(final['compressed'], percent=True)}",
                "how": f"test accuracy at the last evaluation, held-out goals, weighted by window count; mean ± 95 % t over seeds "
                       f"(n = {final['ad']['n']}, {final['compressed']['n']})"})
    level = level_fraction * min(final["ad"]["mean"], final["compressed"]["mean"])
    reach = {m: [r.steps_to(level) for r in rs] for m, rs in (("ad", ad), ("compressed", comp))}
    out.append({"claim": "sample efficiency (steps to a test accuracy)", "guide": "1.3x",
                "measured": _ratio_text(reach["ad"], reach["compressed"], "x"),
                "how": f"training steps until the test accuracy first reaches {100 * level:.1f} % ({100 * level_fraction:.0f} % of the "
                       f"lower mean final accuracy); steps(AD) / steps(CompressedAD), > 1 favours CompressedAD; {_reached(reach)}"})
    own = {m: [r.steps_to(level_fraction * r.summary()["test_acc_final"]) for r in rs] for m, rs in (("ad", ad), ("compressed", comp))}
    out.append({"claim": "convergence speed", "guide": "20 % faster",
                "measured": _ratio_text(own["ad"], own["compressed"], "%"),
                "how": f"training steps until a run first reaches {100 * level_fraction:.0f} % of its own final test accuracy; "
                       f"1 - steps(CompressedAD) / steps(AD), > 0 favours CompressedAD; {_reached(own)}"})
    return out


def _reached(reach: dict[str, list[float | None]]) -> str:
    parts = []
    for m, vals in reach.items():
        ok = [v for v in vals if v is not None]
        mean = f"{np.mean(ok):,.0f}" if ok else "—"
        parts.append(f"{MODEL_LABELS[m]} {len(ok)}/{len(vals)} runs reached it, mean {mean} steps")
    return "; ".join(parts)


def _ratio_text(ad: list[float | None], comp: list[float | None], kind: str) -> str:
    a = [v for v in ad if v is not None]
    c = [v for v in comp if v is not None]
    if not a or not c or np.mean(c) == 0 or np.mean(a) == 0:
        return "n/a (a model never reached the level)"
    if kind == "x":
        return f"{np.mean(a) / np.mean(c):.2f}x"
    return f"{100 * (1 - np.mean(c) / np.mean(a)):+.0f} %"


# --------------------------------------------------------------------------- outputs
METRIC_COLUMNS = [("test_acc_best", "test acc (best ckpt)", True), ("test_acc_final", "test acc (final)", True),
                  ("test_loss_best", "test loss (best ckpt)", False), ("test_loss_final", "test loss (final)", False)] + \
                 [(f"return_ep{e}", f"return ep {e}", False) for e in REPORT_EPISODES] + [("auc", "AUC (mean return)", False)]


@dataclass
class CompareResult:
    out_dir: Path
    table_md: Path
    table_csv: Path
    figure_png: Path
    figure_pdf: Path
    summary_json: Path
    rows: list[dict[str, Any]]
    claims: list[dict[str, str]]
    references: dict[str, Any]


def _test_goals(runs: list[ADRun]) -> tuple[str, list[int]]:
    from fiberlab.envs.darkroom import task_split

    for r in runs:
        for ev in r.evaluations.values():
            if ev.get("goals") == "test" and ev.get("tasks"):
                return ev.get("env", r.env), [int(t) for t in ev["tasks"]]
    env = runs[0].env
    return env, task_split(env, int(runs[0].config.get("env_split_seed", 0)))[1]


def compare_ad_runs(runs: Sequence[str | Path], out: str | Path, history: str | Path | None = None,
                    timesteps: int | None = None, level_fraction: float = LEVEL_FRACTION) -> CompareResult:
    """Gather the runs (run folders, or train folders holding them), write the table (md, csv), the
    figure (png, pdf) and the JSON summary under ``out``; return where."""
    from fiberlab.envs.darkroom import best_return

    run_dirs = find_runs(runs)
    records = [read_run(p, timesteps=timesteps) for p in run_dirs]
    env, test_goals = _test_goals(records)
    envs = sorted({r.env for r in records})
    if len(envs) > 1:
        raise BadInput(f"runs of different envs ({', '.join(envs)}): compare runs of one env")
    history = history or next((r.dataset for r in records if r.dataset), None)
    refs: dict[str, Any] = {"env": env, "test_goals": test_goals, "best_return": float(best_return(env, test_goals).mean())}
    history_attrs = None
    if history is not None and Path(history).is_file():
        src = ppo_source_curve(history, test_goals)
        refs["ppo_source"] = src["curve"]
        refs["history"] = str(history)
        refs["ppo_streams"] = src["n_stream"]
        history_attrs = src["attrs"]
    rows = _group_rows(records)
    measured = claims(records, history_attrs, level_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / f"{STEM}.md", out / f"{STEM}.csv"
    write_text_atomic(md, markdown(rows, refs, measured, records))
    write_text_atomic(csv_path, csv_text(rows, refs))
    png, pdf = figure(rows, refs, out / f"{STEM}.png")
    summary = out / f"{STEM}.json"
    write_json_atomic(summary, _jsonable({"rows": [{k: v for k, v in r.items() if k not in ("curves", "acc_curves")} for r in rows],
                                          "curves": {r["group"]: r["curves"] for r in rows}, "references": refs, "claims": measured}))
    return CompareResult(out, md, csv_path, png, pdf, summary, rows, measured, refs)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def _ref_at(curve: list[float] | None, e: int) -> str:
    return f"{curve[e - 1]:.2f}" if curve and len(curve) >= e else "—"


def markdown(rows: list[dict[str, Any]], refs: dict[str, Any], measured: list[dict[str, str]], runs: list[ADRun]) -> str:
    n_ep = max((r["n_episodes"] for r in rows), default=0)
    intro = (f"Test goals: {refs['test_goals']} ({len(refs['test_goals'])}). Mean ± half-width of the 95 % Student-t interval "
             f"over training seeds (n = seeds; n/a: one seed, no interval). Returns: in-context, the mean over the test goals "
             f"of one seed's evaluation; AUC: the mean return over the {n_ep} episodes. Accuracy and loss on the held-out goals; 'best "
             "ckpt' is the evaluation with the highest test accuracy (the checkpoint kept and evaluated in context, selected on the "
             "test goals as DICP and the guide do, so optimistic), 'final' the last one.")
    lines = [f"# AD vs CompressedAD vs random markers: {refs['env']}", "", intro, ""]
    header = ["group", "n"] + [title for _, title, _ in METRIC_COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        n = max(r[k]["n"] for k, _, _ in METRIC_COLUMNS)
        cells = [r["group"], str(n)] + [fmt_ci(r[k], decimals=3 if "loss" in k else 2, percent=pct) for k, _, pct in METRIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    ppo = refs.get("ppo_source")
    if ppo:
        cells = [f"PPO source ({refs['ppo_streams']} streams x {len(refs['test_goals'])} goals)", "—", "—", "—", "—", "—"]
        cells += [_ref_at(ppo, e) for e in REPORT_EPISODES] + [f"{np.mean(ppo[:n_ep or len(ppo)]):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    best = refs["best_return"]
    lines.append("| " + " | ".join(["best possible", "—", "—", "—", "—", "—"] + [f"{best:.2f}"] * (len(REPORT_EPISODES) + 1)) + " |")
    lines += ["", "Reference lines: the PPO source curve is episode k of the PPO learners that wrote the history (the "
              "curve AD distils; AD in context should rise in fewer episodes); the best possible return is what an "
              "agent that knows the goal gets." + ("" if ppo else " (No history file found: no PPO source line.)"), ""]
    lines += ["## The guide's claims, measured", "", "| claim | guide | measured | how |", "|---|---|---|---|"]
    for c in measured:
        lines.append(f"| {c['claim']} | {c['guide']} | {c['measured']} | {c['how']} |")
    lines += ["", "## Runs", "", "| run | model | seed | evaluations | best step | test acc (best) |", "|---|---|---|---|---|---|"]
    for r in runs:
        s = r.summary()
        lines.append(f"| {r.path} | {r.model} | {r.seed} | {', '.join(sorted(r.evaluations)) or '—'} | "
                     f"{s.get('best_step', float('nan')):,.0f} | {100 * s.get('test_acc_best', float('nan')):.1f} % |")
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict[str, Any]], refs: dict[str, Any]) -> str:
    """One row per group: n, then ``<metric>_mean`` and ``<metric>_ci95`` (``n/a`` for one seed);
    the reference lines as rows with the return columns only."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "model", "variant", "markers", "n"] + [f"{k}_{p}" for k, _, _ in METRIC_COLUMNS for p in ("mean", "ci95")])

    def num(x: float) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.6g}"

    for r in rows:
        n = max(r[k]["n"] for k, _, _ in METRIC_COLUMNS)
        vals = []
        for k, _, _ in METRIC_COLUMNS:
            s = r[k]
            vals += ["", ""] if s["n"] == 0 else [num(s["mean"]), num(s["half"])]
        w.writerow([r["group"], r["model"], r["variant"], r["markers"] or "", n] + vals)
    n_metrics = len(METRIC_COLUMNS)
    ppo = refs.get("ppo_source")
    if ppo:
        n_ep = max((r["n_episodes"] for r in rows), default=0) or len(ppo)
        vals = [""] * 8 + [x for e in REPORT_EPISODES for x in ((num(ppo[e - 1]), "") if len(ppo) >= e else ("", ""))]
        vals += [num(float(np.mean(ppo[:n_ep]))), ""]
        w.writerow(["PPO source", "", "", "", refs.get("ppo_streams", "")] + vals)
    best = refs["best_return"]
    w.writerow(["best possible", "", "", "", ""] + [""] * 8 + [num(best), ""] * (n_metrics - 4))
    return buf.getvalue()


def figure(rows: list[dict[str, Any]], refs: dict[str, Any], png: Path) -> tuple[Path, Path]:
    """Left: in-context return per episode (mean line and 95 % band per group over seeds), the PPO
    source curve and the best possible return. Right: test accuracy over training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    for r in rows:
        color = COLORS.get(r["model"], "tab:gray")
        # dashed: a model evaluated with other markers than its own; dash-dot/dotted: other variants
        variants_of_model = sorted({q["variant"] for q in rows if q["model"] == r["model"]})
        style = "--" if r["markers"] not in (None, DEFAULT_MARKERS.get(r["model"])) else \
            ("-", "-.", ":")[variants_of_model.index(r["variant"]) % 3]
        curves = np.array(r["curves"], dtype=float) if r["curves"] else np.zeros((0, 0))
        if curves.size:
            x = np.arange(1, curves.shape[1] + 1)
            mean, lo, hi = _band(curves)
            ax.plot(x, mean, style, color=color, label=f"{r['group']} (n={curves.shape[0]})")
            if lo is not None:
                ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        if r["markers"] in (None, DEFAULT_MARKERS.get(r["model"])) and r["acc_curves"]:
            steps, accs = _aligned(r["acc_curves"])
            if steps.size:
                mean, lo, hi = _band(accs)
                name = MODEL_LABELS.get(r["model"], r["model"]) + (f" [{r['variant']}]" if r["variant"] else "")
                bx.plot(steps, 100 * mean, style, color=color, label=f"{name} (n={accs.shape[0]})")
                if lo is not None:
                    bx.fill_between(steps, 100 * lo, 100 * hi, color=color, alpha=0.2, linewidth=0)
    ppo = refs.get("ppo_source")
    if ppo:
        n_ep = max((r["n_episodes"] for r in rows), default=0) or len(ppo)
        ax.plot(np.arange(1, min(n_ep, len(ppo)) + 1), ppo[:n_ep], ":", color="tab:green", label="PPO source (learning curve)")
    ax.axhline(refs["best_return"], color="black", linestyle="--", linewidth=1, label=f"best possible ({refs['best_return']:.2f})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("in-context episode")
    ax.set_ylabel(f"return (mean over {len(refs['test_goals'])} test goals)")
    ax.set_title("in-context learning on held-out goals (95 % band over seeds)")
    ax.legend(fontsize=7)
    bx.set_xlabel("training step")
    bx.set_ylabel("test accuracy (%)")
    bx.set_title("test accuracy during training")
    if bx.lines:
        bx.legend(fontsize=7)
    fig.tight_layout()
    png = Path(png)
    save_figure_atomic(fig, png, close=False)
    pdf = save_figure_atomic(fig, png.with_suffix(".pdf"))
    return png, pdf


def _band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Mean over rows and the 95 % t band per column (None with one row: no band, not a zero-width one)."""
    mean = curves.mean(axis=0)
    if curves.shape[0] < 2:
        return mean, None, None
    half = np.array([t_interval(curves[:, j])[1] for j in range(curves.shape[1])])
    return mean, mean - half, mean + half


def _aligned(acc_curves: list[tuple[list[float], list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """The runs' accuracy curves on the steps they all have (same config: the same eval steps)."""
    common = None
    for steps, _ in acc_curves:
        common = set(steps) if common is None else common & set(steps)
    grid = np.array(sorted(common or []))
    if not grid.size:
        return grid, np.zeros((0, 0))
    rows = []
    for steps, acc in acc_curves:
        lookup = dict(zip(steps, acc))
        rows.append([lookup[s] for s in grid])
    return grid, np.array(rows, dtype=float)
