"""The text forms of a sweep report: numbers and intervals as text, the markdown report, the CSV
table and the booktabs LaTeX table (with :func:`tex_escape`), all built from the rows and other
results of :mod:`fiberlab.sweep.report_data`; returned as strings, written by the caller.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from fiberlab.errors import first_line
from fiberlab.sweep.report_data import cell_counts


def _f(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec)


def _g(x: float, digits: int) -> str:
    """``digits`` significant digits, but whole numbers (with thousands commas) from 10**digits up."""
    return format(x, ",.0f") if abs(x) >= 10**digits else format(x, f".{digits}g")


def _ci_text(d: dict[str, Any], steps: bool = False, pm: str = " ± ") -> str:
    """``mean ± half`` (4 and 2 significant digits; whole agent steps when ``steps``)."""
    if d["n"] == 0:
        return "—"
    mean = format(d["mean"], ",.0f") if steps else _g(d["mean"], 4)
    if math.isnan(d["half"]):
        return f"{mean}{pm}n/a (n=1)"
    return f"{mean}{pm}{format(d['half'], ',.0f') if steps else _g(d['half'], 2)}"


def _params_text(p: Any) -> str:
    if p is None:
        return "n/a"
    if isinstance(p, list):
        return f"{p[0]:,}–{p[-1]:,}"
    return f"{p:,}"


def _conv_text(d: dict[str, Any]) -> str:
    if d["converged"] == 0:
        return "—"
    return _ci_text(d, steps=True)


def _md(text: Any) -> str:
    """A markdown table cell: ``|`` escaped."""
    return str(text).replace("|", "\\|")


def markdown(index: dict[str, Any], metric: str, rows, best, cells, agg, caret, figures, skipped, conventions) -> str:
    counts = cell_counts(cells)
    lines = [
        f"# Sweep report: {index.get('sweep', '?')}", "",
        f"Metric `{metric}`; budget {_f(index.get('budget'), ',')} agent steps per cell; spec hash "
        f"`{index.get('spec_hash', '?')}`. Cells: {counts['done_with_data']} done with data, "
        f"{counts['no_data']} done without data, {counts['failed']} failed, {counts['pending']} pending, "
        f"{counts['running']} running, of {counts['total']}.", "",
        f"| variant | done | no data | failed | pending | final {metric} (95 % CI) | AUC (95 % CI) | "
        "steps to convergence (95 % CI) | converged | wall time (s) | SPS | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = "**" if r["best"] else ""
        conv = r["convergence"]
        lines.append(
            f"| {b}{_md(r['variant'])}{b} | {r['done']} | {r['no_data']} | {r['failed']} | {r['pending'] + r['running']} | "
            f"{b}{_ci_text(r['final'])}{b} | {_ci_text(r['auc'])} | {_conv_text(conv)} | "
            f"{conv['converged']}/{conv['of']} | {_f(r['wall_time'], '.1f')} | {_f(r['sps'], ',.0f')} | {_params_text(r['params'])} |"
        )
    lines += ["", "Pending counts running cells too. n/a (n=1): one seed, no interval can be estimated.", ""]
    lines += [f"- {e['note']}" for e in best]
    if any(r["group"] for r in rows):
        lines += _difficulty_lines(rows, metric)
    if agg is not None:
        lines += ["", "## Aggregates over envs", "",
                  "| architecture | runs per env | dropped runs | IQM normalised final (95 % CI) | mean normalised final (95 % CI) |",
                  "|---|---|---|---|---|"]
        for a in agg["architectures"]:
            iq, mn = a["iqm"], a["mean"]
            lines.append(
                f"| {_md(a['architecture'])} | {a['runs_per_env']} | {a['dropped_runs']} | {iq['point']:.3f} [{iq['low']:.3f}, {iq['high']:.3f}] | "
                f"{mn['point']:.3f} [{mn['low']:.3f}, {mn['high']:.3f}] |"
            )
        lines += [""] + [
            f"- normalisation of {e}: [{_f(v['low'])}, {_f(v['high'])}] ({v['source']})" for e, v in agg["normalisation"].items()
        ]
        lines += [f"- {s['architecture']}: skipped, {s['reason']}" for s in agg["skipped"]]
        lines += [f"- {n}" for n in agg["notes"]]
    if caret:
        lines += ["", "## `^` comparison", "", "| pattern | with ^ | final | final (^) | difference | separated |", "|---|---|---|---|---|---|"]
        for p in caret:
            lines.append(
                f"| {_md(p['a'])} | {_md(p['b'])} | {p['final_a']:.4g} | {p['final_b']:.4g} | {p['difference']:+.4g} | {'yes' if p['separated'] else 'no'} |"
            )
    nodata = [c for c in cells if c.status == "done" and not c.has_data]
    if nodata:
        lines += ["", "## Done cells without data", ""]
        lines += [f"- {c.name} ({c.raw.get('run_dir')}): {c.no_data}" for c in nodata]
    failed = [c for c in cells if c.status == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""]
        lines += [
            f"- {c.name}: exit code {c.raw.get('exit_code')}, attempts {c.raw.get('attempts')}: "
            f"{first_line(str(c.raw.get('error') or ''), 'no error recorded')}" for c in failed
        ]
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({Path(paths[0]).name})" for name, paths in figures.items()]
    lines += [f"- {name}: skipped, {why}" for name, why in skipped.items()]
    lines += ["", "## Conventions", ""] + [f"- {k}: {v}" for k, v in conventions.items()]
    return "\n".join(lines) + "\n"


def _difficulty_lines(rows, metric: str) -> list[str]:
    """How hard each task is for each architecture: agent steps and the run's own wall-clock seconds
    until the curve converged (the convergence rule of docs/sweeps.md), over the seeds that did."""
    lines = ["", "## Difficulty: steps and wall time to convergence", "",
             f"| task | architecture | converged | steps to convergence (95 % CI) | wall time to convergence, s (95 % CI) | final {metric} (95 % CI) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        conv = r["convergence"]
        wall = _ci_text(r["convergence_wall"]) if conv["converged"] else "—"
        lines.append(f"| {_md(r['group'])} | {_md(r['architecture'])} | {conv['converged']}/{conv['of']} | {_conv_text(conv)} | {wall} | {_ci_text(r['final'])} |")
    lines += ["", "A task none of whose seeds converged within the budget is harder than the budget can say: "
              "read its row as \"more than the budget\", not as a number.", ""]
    return lines


def csv_text(rows, axes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", *axes, "done", "no_data", "failed", "pending", "running", "final_mean", "final_ci95",
                "auc_mean", "auc_ci95", "convergence_mean", "convergence_ci95", "converged", "convergence_wall_mean",
                "convergence_wall_ci95", "wall_time_mean",
                "sps_mean", "params", "best"])

    def num(x: Any) -> str:
        if x is None:
            return ""
        if isinstance(x, list):
            return "-".join(str(v) for v in x)
        return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.10g}" if isinstance(x, float) else str(x)

    for r in rows:
        fin, auc, conv = r["final"], r["auc"], r["convergence"]
        cm = conv["mean"] if conv["converged"] else None
        ch = conv["half"] if conv["converged"] else None
        cw = r["convergence_wall"]
        cwm, cwh = (cw["mean"], cw["half"]) if conv["converged"] and cw["n"] else (None, None)
        w.writerow([r["variant"], *(r["axes"].get(a, "") for a in axes), r["done"], r["no_data"], r["failed"],
                    r["pending"], r["running"], num(fin["mean"] if fin["n"] else None), num(fin["half"] if fin["n"] else None),
                    num(auc["mean"] if auc["n"] else None), num(auc["half"] if auc["n"] else None), num(cm), num(ch),
                    conv["converged"], num(cwm), num(cwh), num(r["wall_time"]), num(r["sps"]), num(r["params"]), int(r["best"])])
    return buf.getvalue()


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: Any) -> str:
    """Text for LaTeX: the ten special characters escaped."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def latex(index: dict[str, Any], metric: str, rows) -> str:
    def ci(d: dict[str, Any], steps: bool = False) -> str:
        return tex_escape(_ci_text(d, steps)).replace("±", r"$\pm$").replace("—", "--")

    lines = [
        "% fiberlab sweep report; needs \\usepackage{booktabs}",
        "\\begin{table}[t]", "\\centering",
        f"\\caption{{{tex_escape(index.get('sweep', ''))}: final {tex_escape(metric)} and AUC (mean $\\pm$ 95\\,\\% "
        "Student-t half-width over seeds); steps to convergence over the seeds that converged.}",
        "\\begin{tabular}{lrrrrrr}", "\\toprule",
        "Variant & Seeds & Final & AUC & Steps to convergence & SPS & Params \\\\", "\\midrule",
    ]
    group = rows[0]["group"] if rows else None
    for r in rows:
        if r["group"] != group:
            lines.append("\\midrule")
            group = r["group"]
        name, fin = tex_escape(r["variant"]), ci(r["final"])
        if r["best"]:
            name, fin = f"\\textbf{{{name}}}", f"\\textbf{{{fin}}}"
        conv = r["convergence"]
        conv_txt = "--" if conv["converged"] == 0 else f"{ci(conv, True)} ({conv['converged']}/{conv['of']})"
        seeds = f"{r['done']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        lines.append(
            f"{name} & {seeds} & {fin} & {ci(r['auc'])} & {conv_txt} & {tex_escape(_f(r['sps'], ',.0f'))} & "
            f"{tex_escape(_params_text(r['params']))} \\\\"
        )
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"

