"""A study's report as one self-contained HTML page (figures embedded as data URIs, inline CSS,
no scripts, no external references) and as Markdown beside PNG files."""

from __future__ import annotations

import base64
import html
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gdlab.report import figures as figures_module
from gdlab.report.figures import Figure, optimizer_colors, ordered_names, task_section
from gdlab.store.records import StoredRun

HTML_NAME = "report.html"
MARKDOWN_NAME = "summary.md"
FIGURES_DIR = "figures"

HOW_TO_READ = (
    "The comparison follows one protocol for every optimizer: each was tuned with the same budget "
    "(the same number of learning-rate search trials per task), and its best setting was then "
    "re-run over several seeds; curves and tables show those final runs, the sensitivity figures "
    "show the search trials. Costs are counted in gradient evaluations divided by the training-set "
    "size N (epoch equivalents, comparable across batch sizes) and in training wall time in "
    "seconds, never in steps. Time-to-target is the first point at which a run reached the task's "
    "target; a run that never reached it counts as \"not reached\", not as a number. Intervals are "
    "confidence intervals over seeds. Diverged runs are marked with crosses in the figures and "
    "counted in the \"diverged\" column."
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1000px; padding: 1.5em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; }
.howto { background: #f5f7fa; border-left: 4px solid #8aa; padding: 0.6em 1em; }
nav ul { columns: 2; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px;
          margin-right: 0.4em; vertical-align: baseline; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #444; font-size: 0.9em; max-width: 780px; }
""".strip()


def build_report(runs: list[StoredRun], summary: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/report.html``, ``out_dir/summary.md`` and ``out_dir/figures/NAME.png``.

    Everything is written into a temporary directory beside ``out_dir`` first and moved in only once all of it
    exists, so an error leaves ``out_dir`` as it was (a previous report's ``figures/`` is replaced as a whole).
    Returns ``{"html", "markdown", "figures"}`` paths.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        made = figures_module.study_figures(runs, summary)
        (staging / FIGURES_DIR).mkdir()
        for figure in made:
            (staging / FIGURES_DIR / f"{figure.name}.png").write_bytes(figure.png)
        (staging / MARKDOWN_NAME).write_text(render_markdown(summary, made, runs), encoding="utf-8")
        (staging / HTML_NAME).write_text(render_html(summary, made, runs), encoding="utf-8")
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"html": out / HTML_NAME, "markdown": out / MARKDOWN_NAME, "figures": out / FIGURES_DIR}


def _install(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    target = out / FIGURES_DIR
    if target.exists():
        os.replace(target, staging / "previous-figures")
    os.replace(staging / FIGURES_DIR, target)
    os.replace(staging / MARKDOWN_NAME, out / MARKDOWN_NAME)
    os.replace(staging / HTML_NAME, out / HTML_NAME)


def render_html(summary: dict[str, Any], figures: Sequence[Figure], runs: Sequence[StoredRun] = ()) -> str:
    """The report as one HTML page: figures embedded as base64 PNG data URIs, inline CSS, no scripts or external
    references; all text escaped."""
    esc = html.escape
    study = str(summary.get("study", "study"))
    optimizers = ordered_names(summary.get("optimizers", []), (r.optimizer for r in runs))
    colors = optimizer_colors(optimizers)
    sections = _sections(summary, figures, runs)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gdlab report: {esc(study)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>",
        f"<h1>gdlab report: {esc(study)}</h1>", f'<p class="meta">{esc(_overview(summary, runs))}</p>',
        "<h2>How to read this</h2>", f'<p class="howto">{esc(HOW_TO_READ)}</p>', "<nav><ul>",
        *(f'<li><a href="#section-{i}">{esc(section)}</a></li>' for i, (section, _) in enumerate(sections)),
        "</ul></nav>",
    ]
    for i, (section, members) in enumerate(sections):
        parts += [f'<section id="section-{i}">', f"<h2>{esc(section)}</h2>"]
        task = _task_of(section, summary)
        if task is not None:
            parts.extend(_html_task_block(task, summary, colors))
        parts += [*map(_html_figure, members), "</section>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def render_markdown(summary: dict[str, Any], figures: Sequence[Figure], runs: Sequence[StoredRun] = ()) -> str:
    """The report as Markdown: per task the target and a ranking table; figures referenced as ``figures/NAME.png``."""
    study = str(summary.get("study", "study"))
    lines = [f"# gdlab report: {_md(study)}", "", _md(_overview(summary, runs)), "",
             "## How to read this", "", _md(HOW_TO_READ), ""]
    for section, members in _sections(summary, figures, runs):
        lines += [f"## {_md(section)}", ""]
        task = _task_of(section, summary)
        if task is not None:
            lines += [_md(_target_sentence(summary, task)), ""]
            headers, rows = _ranking_table(summary.get("ranking", {}).get(task, []))
            if rows:
                cells = ["| " + " | ".join(map(_md, row)) + " |" for row in [headers, *rows]]
                rule = "|".join("---:" if h in _NUMERIC else "---" for h in headers)
                lines += [cells[0], f"|{rule}|", *cells[1:]]
            else:
                lines.append("No ranking for this task.")
            lines.append("")
        for figure in members:
            lines += [f"![{_md(figure.title)}]({FIGURES_DIR}/{figure.name}.png)", "",
                      f"*{_md(figure.caption)}*", ""]
    return "\n".join(lines)


def _sections(summary: dict[str, Any], figures: Sequence[Figure],
              runs: Sequence[StoredRun]) -> list[tuple[str, list[Figure]]]:
    """Report sections in order: one per task (even without figures), then the others."""
    tasks = ordered_names(summary.get("tasks", []), (r.task for r in runs))
    names = ordered_names([task_section(t) for t in tasks], (f.section for f in figures))
    return [(name, [f for f in figures if f.section == name]) for name in names]


def _task_of(section: str, summary: dict[str, Any]) -> str | None:
    prefix = task_section("")
    return section[len(prefix):] if section.startswith(prefix) else None


def _overview(summary: dict[str, Any], runs: Sequence[StoredRun]) -> str:
    tasks = summary.get("tasks", [])
    optimizers = summary.get("optimizers", [])
    text = (f"Study {summary.get('study', '')}: {len(tasks)} task(s) "
            f"({', '.join(map(str, tasks))}), {len(optimizers)} optimizer(s) "
            f"({', '.join(map(str, optimizers))}).")
    tune = [r for r in runs if r.phase == "tune"]
    final = [r for r in runs if r.phase == "final"]
    if tune:
        budgets = sorted(set(Counter((r.task, r.optimizer) for r in tune).values()))
        budget = str(budgets[0]) if len(budgets) == 1 else f"{budgets[0]} to {budgets[-1]}"
        text += f" Tuning: {budget} learning-rate trial(s) per optimizer and task."
    if final:
        text += f" Final runs: {len(final)} over {len({r.seed for r in final})} seed(s)."
    return text


def _target_sentence(summary: dict[str, Any], task: str) -> str:
    target = summary.get("targets", {}).get(task)
    if not target or target.get("value") is None:
        return "Target: none set."
    metric, value = target.get("metric", "train_loss"), target["value"]
    if metric == "test_accuracy":
        return f"Target: {metric} ≥ {value:.1%}."
    return f"Target: {metric} ≤ {value:.3g}."


_NUMERIC = {"rank", "best lr", "diverged"}


def _ranking_table(entries: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    with_accuracy = any((e.get("final_test_accuracy") or {}).get("mean") is not None for e in entries)
    headers = ["rank", "optimizer", "best lr", "final train loss, mean [CI]"]
    if with_accuracy:
        headers.append("test accuracy, mean [CI]")
    headers += ["time to target, median (reached/runs)",
                "evals to target, median epochs (reached/runs)", "diverged"]
    rows = []
    for entry in entries:
        row = [str(entry.get("rank", "")), str(entry.get("optimizer", "")),
               _num(entry.get("best_lr")), _stat(entry.get("final_train_loss"), percent=False)]
        if with_accuracy:
            row.append(_stat(entry.get("final_test_accuracy"), percent=True))
        row += [_to_target(entry.get("time_to_target"), "s"),
                _to_target(entry.get("evals_to_target"), "epochs"), _fraction(entry.get("diverged_fraction"))]
        rows.append(row)
    return headers, rows


def _num(value: Any) -> str:
    return "—" if value is None else f"{value:.3g}"


def _fraction(value: Any) -> str:
    return "—" if value is None else f"{value:.0%}"


def _stat(stats: dict[str, Any] | None, percent: bool) -> str:
    stats = stats or {}
    mean = stats.get("mean")
    if mean is None:
        return "—"
    fmt = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3g}")
    text = fmt(mean)
    low, high = stats.get("ci_low"), stats.get("ci_high")
    if low is not None and high is not None:
        text += f" [{fmt(low)}, {fmt(high)}]"
    return text


def _to_target(result: dict[str, Any] | None, unit: str) -> str:
    result = result or {}
    counts = f"({result.get('reached', 0)}/{result.get('runs', 0)})"
    median = result.get("median")
    return f"not reached {counts}" if median is None else f"{median:.3g} {unit} {counts}"


def _html_task_block(task: str, summary: dict[str, Any], colors: dict[str, str]) -> list[str]:
    esc = html.escape
    parts = [f"<p>{esc(_target_sentence(summary, task))}</p>"]
    headers, rows = _ranking_table(summary.get("ranking", {}).get(task, []))
    if not rows:
        return parts + ["<p>No ranking for this task.</p>"]
    parts += [f'<table class="ranking" aria-label="{esc(f"ranking on {task}", quote=True)}">',
              "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>", "<tbody>"]
    for row in rows:
        cells = []
        for header, cell in zip(headers, row):
            if header == "optimizer":
                color = esc(colors.get(cell, "#999999"), quote=True)
                cells.append(f'<td><span class="swatch" style="background:{color}"></span>{esc(cell)}</td>')
            else:
                num = ' class="num"' if header in _NUMERIC else ""
                cells.append(f"<td{num}>{esc(cell)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts += ["</tbody>", "</table>"]
    return parts


def _html_figure(figure: Figure) -> str:
    esc = html.escape
    data = base64.b64encode(figure.png).decode("ascii")
    png = figure.png
    size = struct.unpack(">II", png[16:24]) if len(png) >= 24 and png[12:16] == b"IHDR" else None
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return (f'<figure id="figure-{esc(figure.name, quote=True)}">'
            f'<img src="data:image/png;base64,{data}" alt="{esc(figure.title, quote=True)}"{dims}>'
            f"<figcaption><strong>{esc(figure.title)}.</strong> {esc(figure.caption)}</figcaption>"
            "</figure>")


_MD_SPECIAL = set("\\`*_[]<>|#")


def _md(text: str) -> str:
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(text))
