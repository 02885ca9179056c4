"""Report figures and the HTML/Markdown writers, on a synthetic study (two tasks, three
optimizers, three seeds, tuning and final runs, one diverged run, sharpness on one run)."""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib import _pylab_helpers

from gdlab.report import Figure, build_report, study_figures
from gdlab.report import figures as figures_module
from gdlab.report import html as html_module
from gdlab.store.records import StoredRun

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASK_TYPES = {"quadratic": "regression", "blobs": "classification"}
OPTIMIZERS = ("gd", "momentum", "adam")
SEEDS = (0, 1, 2)
TUNE_LRS = (0.001, 0.01, 0.1, 1.0, 10.0)
RATES = {"gd": 0.04, "momentum": 0.1, "adam": 0.07}
SECONDS_PER_EPOCH = {"gd": 0.010, "momentum": 0.011, "adam": 0.014}
BEST_LR = {"gd": 0.1, "momentum": 0.1, "adam": 0.01}


def _history(task: str, opt: str, seed: int, lr: float, diverge: bool,
             quality: float) -> list[dict]:
    """Losses that fall exponentially (or blow up when ``diverge``), logged at seed-dependent
    steps so seeds do not share x values; some records lack train_loss or test_accuracy."""
    rate = RATES[opt] * quality * (1 + 0.1 * seed)
    records = []
    for step in range(0, 101, 1 + seed):
        epochs = float(step)
        if diverge:
            loss = 2.0 * math.exp(0.35 * epochs)
            if loss > 1e12:
                records.append({"step": step, "epochs": epochs, "wall_time_s": epochs * 0.01,
                                "train_loss": None, "batch_loss": None, "grad_norm": None,
                                "lr": lr, "test_loss": None, "test_accuracy": None})
                break
        else:
            loss = 2.0 * math.exp(-rate * epochs) + 1e-4
        classification = TASK_TYPES[task] == "classification"
        accuracy = 0.1 + 0.85 * (1 - math.exp(-rate * epochs)) if classification else None
        records.append({
            "step": step,
            "epochs": epochs,
            "wall_time_s": epochs * SECONDS_PER_EPOCH[opt] * (1 + 0.05 * seed),
            "train_loss": None if step % 7 == 3 else loss,
            "batch_loss": loss,
            "grad_norm": 3.0 * math.sqrt(loss),
            "lr": lr,
            "test_loss": 1.1 * loss if step % 2 == 0 else None,
            "test_accuracy": accuracy if step % 2 == 0 else None,
        })
    return records


def _run(task: str, opt: str, phase: str, seed: int, lr: float, trial: int | None,
         diverge: bool = False, quality: float = 1.0) -> StoredRun:
    history = _history(task, opt, seed, lr, diverge, quality)
    last = next(r for r in reversed(history) if r["train_loss"] is not None)
    final = {**history[-1], "train_loss": None if diverge else last["train_loss"],
             "status": "diverged" if diverge else "completed"}
    record = {"config": {"task": task, "optimizer": opt, "lr": lr}, "final": final,
              "history": history, "events": [], "diagnostics": {}}
    if phase == "final" and task == "quadratic" and opt == "gd" and seed == 0:
        steps = range(0, 101, 10)
        record["diagnostics"] = {
            "sharpness": [{"step": s, "value": (2 / lr) * (1 - 0.6 * math.exp(-s / 30))}
                          for s in steps],
            "two_over_lr": [{"step": s, "value": 2 / lr} for s in steps],
            "grad_norm/layer.weight": [{"step": s, "value": 1.0 / (1 + s)} for s in steps],
        }
    key = f"fake/{task}/{opt}/{phase}/{trial}/{seed}"
    return StoredRun(key, "fake", task, opt, phase, trial, seed, lr, {}, record)


def _stats(values: list[float | None], diverged: int) -> dict:
    finite = [v for v in values if v is not None]
    if not finite:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None,
                "diverged_fraction": diverged / max(1, len(values))}
    mean, std = float(np.mean(finite)), float(np.std(finite))
    return {"n": len(finite), "mean": mean, "std": std, "ci_low": mean - std, "ci_high": mean + std,
            "diverged_fraction": diverged / len(values)}


def _to_target(runs: list[StoredRun], target: float, key: str) -> dict:
    hits = []
    for run in runs:
        hit = next((r[key] for r in run.history
                    if r["train_loss"] is not None and r["train_loss"] <= target), None)
        if hit is not None:
            hits.append(hit)
    return {"median": float(np.median(hits)) if hits else None, "reached": len(hits),
            "runs": len(runs)}


def fake_study(name: str = "fake study") -> tuple[list[StoredRun], dict]:
    """Runs and a summary shaped like the study module's, for two tasks and three optimizers."""
    runs: list[StoredRun] = []
    for task in TASK_TYPES:
        for opt in OPTIMIZERS:
            for trial, lr in enumerate(TUNE_LRS):
                diverge = lr >= (10.0 if opt == "adam" else 1.0)
                quality = 1.0 / (1 + abs(math.log10(lr / BEST_LR[opt])))
                runs.append(_run(task, opt, "tune", 0, lr, trial, diverge, quality))
            for seed in SEEDS:
                diverge = task == "quadratic" and opt == "gd" and seed == 2
                runs.append(_run(task, opt, "final", seed, BEST_LR[opt], None, diverge))
    targets = {"quadratic": {"metric": "train_loss", "value": 0.05},
               "blobs": {"metric": "train_loss", "value": 0.001}}
    ranking, sensitivity = {}, {}
    for task in TASK_TYPES:
        entries = []
        for opt in OPTIMIZERS:
            final = [r for r in runs if (r.task, r.optimizer, r.phase) == (task, opt, "final")]
            diverged = sum(r.final["status"] == "diverged" for r in final)
            accuracy = [r.final["test_accuracy"] for r in final]
            entries.append({
                "optimizer": opt, "seeds": len(final),
                "final_train_loss": _stats([r.final["train_loss"] for r in final], diverged),
                "final_test_accuracy": _stats(accuracy, diverged),
                "time_to_target": _to_target(final, targets[task]["value"], "wall_time_s"),
                "evals_to_target": _to_target(final, targets[task]["value"], "epochs"),
                "auc": None, "diverged_fraction": diverged / len(final), "best_lr": BEST_LR[opt],
            })
        entries.sort(key=lambda e: e["time_to_target"]["median"] or math.inf)
        for rank, entry in enumerate(entries, 1):
            entry["rank"] = rank
        ranking[task] = entries
        sensitivity[task] = {
            opt: [{"lr": r.lr, "final_train_loss": r.final["train_loss"],
                   "status": r.final["status"]}
                  for r in runs if (r.task, r.optimizer, r.phase) == (task, opt, "tune")]
            for opt in OPTIMIZERS
        }
    taus = [1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0]
    profiles = {
        "time": {"taus": taus, "curves": {"gd": [0, 0, 0, 0.5, 0.5, 0.5, 0.5],
                                          "momentum": [1, 1, 1, 1, 1, 1, 1],
                                          "adam": [0, 0.5, 1, 1, 1, 1, 1]}},
        "evals": {"taus": taus, "curves": {"gd": [0, 0, 0, 0, 0.5, 0.5, 0.5],
                                           "momentum": [1, 1, 1, 1, 1, 1, 1],
                                           "adam": [0, 0.5, 0.5, 1, 1, 1, 1]}},
    }
    summary = {"study": name, "tasks": list(TASK_TYPES), "optimizers": list(OPTIMIZERS),
               "targets": targets, "ranking": ranking, "profiles": profiles,
               "sensitivity": sensitivity}
    return runs, summary


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    runs, summary = fake_study()
    out = tmp_path_factory.mktemp("report") / "out"
    paths = build_report(runs, summary, out)
    return {"paths": paths, "out": out, "html": paths["html"].read_text(encoding="utf-8"),
            "markdown": paths["markdown"].read_text(encoding="utf-8")}


def _figure_files(report: dict) -> list[Path]:
    return sorted(report["paths"]["figures"].glob("*.png"))


def test_build_report_writes_html_markdown_and_one_png_per_figure(report):
    paths = report["paths"]
    out = report["out"]
    assert paths == {"html": out / "report.html", "markdown": out / "summary.md",
                     "figures": out / "figures"}
    names = {p.stem for p in _figure_files(report)}
    expected = {f"{task}_{kind}" for task in TASK_TYPES
                for kind in ("loss_vs_epochs", "loss_vs_time", "lr_sensitivity", "grad_norm")}
    expected |= {"blobs_accuracy_vs_time", "quadratic_sharpness", "performance_profiles"}
    assert names == expected
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "summary.md"]
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_html_is_self_contained_without_external_references(report):
    page = report["html"]
    assert "http://" not in page and "https://" not in page
    assert 'src="/' not in page and "<script" not in page.lower()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.findall(r'href="(?!#)', page)


def test_html_has_one_img_per_figure_and_figures_under_every_section(report):
    page = report["html"]
    assert page.count("<img ") == len(_figure_files(report))
    sections = re.findall(r"<section .*?</section>", page, flags=re.S)
    headings = [re.search(r"<h2>(.*?)</h2>", s).group(1) for s in sections]
    assert headings == ["task: quadratic", "task: blobs", "performance profiles",
                        "stability traces"]
    for section in sections:
        assert section.count("<img ") >= 1
        assert re.search(r'<img [^>]*alt="[^"]+"', section)
        assert "<figcaption>" in section
    assert "How to read this" in page and "fake study" in page


def test_html_ranking_tables_show_protocol_columns_and_not_reached(report):
    page = report["html"]
    tables = re.findall(r'<table class="ranking".*?</table>', page, flags=re.S)
    assert len(tables) == 2
    regression, classification = tables
    assert "test accuracy" not in regression and "test accuracy" in classification
    for table in tables:
        assert table.count("<tr>") == 1 + len(OPTIMIZERS)
        for header in ("rank", "optimizer", "best lr", "final train loss", "time to target",
                       "evals to target", "diverged"):
            assert header in table
    # gd on quadratic: seed 2 diverged (33%), the other two reach the target; gd on blobs never does
    assert "33%" in regression and "(2/3)" in regression
    assert "not reached (0/3)" in classification


def test_every_embedded_image_decodes_as_a_nontrivial_png(report):
    sources = re.findall(r'src="data:image/png;base64,([^"]*)"', report["html"])
    assert len(sources) == len(_figure_files(report))
    for encoded in sources:
        png = base64.b64decode(encoded, validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
        image = matplotlib.image.imread(io.BytesIO(png), format="png")
        height, width = image.shape[:2]
        assert width >= 700 and height >= 450
        assert float(np.std(image[..., :3])) > 0.02


def test_markdown_has_a_ranking_table_per_task_and_references_every_figure(report):
    markdown = report["markdown"]
    for task in TASK_TYPES:
        block = markdown.split(f"## task: {task}", 1)[1].split("\n## ", 1)[0]
        assert "| rank | optimizer | best lr |" in block
        assert sum(line.startswith("| ") for line in block.splitlines()) == 1 + len(OPTIMIZERS)
        assert "Target: train\\_loss ≤" in block
    for path in _figure_files(report):
        assert f"(figures/{path.name})" in markdown
    assert "not reached (0/3)" in markdown


def test_figure_error_leaves_no_partial_output(tmp_path, monkeypatch):
    runs, summary = fake_study()

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures_module, "_sensitivity_figure", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="figure failed"):
        build_report(runs, summary, out)
    assert list(tmp_path.iterdir()) == []


def test_writer_error_keeps_the_previous_report_intact(tmp_path, monkeypatch):
    runs, summary = fake_study()
    out = tmp_path / "out"
    build_report(runs, summary, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(html_module, "render_html", broken)
    with pytest.raises(OSError, match="disk full"):
        build_report(runs, summary, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_rebuilding_replaces_stale_figures(tmp_path):
    runs, summary = fake_study()
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_bytes(b"old")
    small = [r for r in runs if r.task == "quadratic"]
    small_summary = {**summary, "tasks": ["quadratic"], "profiles": {}}
    paths = build_report(small, small_summary, out)
    names = sorted(p.stem for p in paths["figures"].iterdir())
    assert "stale" not in names and names and all(n.startswith("quadratic_") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_band_is_median_min_max_of_curves_interpolated_within_each_runs_range():
    curves = [(np.array([0.0, 10.0]), np.array([0.0, 10.0])),
              (np.array([0.0, 2.5, 5.0]), np.array([2.0, 2.0, 2.0])),
              (np.array([0.0, 4.0, 10.0]), np.array([4.0, 4.0, 4.0]))]
    grid, med, low, high, count = figures_module._band(curves, log=False)

    def at(x: float) -> int:
        return int(np.argmin(np.abs(grid - x)))

    # the second run ended at 5 and counts one logging interval (2.5) past it, so not at x = 8
    i = at(8.0)
    assert count[i] == 2
    assert med[i] == pytest.approx((grid[i] + 4.0) / 2) and low[i] == pytest.approx(4.0)
    assert high[i] == pytest.approx(grid[i])
    assert count[at(1.0)] == 3 and med[at(1.0)] == pytest.approx(2.0)
    assert count[at(6.0)] == 3 and low[at(6.0)] == pytest.approx(2.0)
    log_curves = [(np.array([0.0, 2.0]), np.array([1.0, 1e-2]))]
    grid, med, *_ = figures_module._band(log_curves, log=True)
    # interpolated in log10: a straight line on a log axis, 10**(-x)
    assert med[at(1.0)] == pytest.approx(10 ** -grid[at(1.0)], rel=1e-9)


def test_figures_have_unique_file_safe_names_sections_and_no_pyplot_state():
    runs, summary = fake_study()
    clashing = [StoredRun(r.run_key + "'", r.study, "Blobs!", r.optimizer, r.phase, r.trial, r.seed,
                          r.lr, r.params, r.record) for r in runs if r.task == "blobs"]
    managers = _pylab_helpers.Gcf.get_num_fig_managers()
    made = study_figures(runs + clashing, {**summary, "tasks": ["blobs", "Blobs!"],
                                          "sensitivity": {}, "profiles": {}})
    assert _pylab_helpers.Gcf.get_num_fig_managers() == managers
    names = [f.name for f in made]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9_-]+", n) for n in names)
    assert {"blobs_loss_vs_epochs", "blobs_loss_vs_epochs-2"} <= set(names)
    # tasks missing from summary["tasks"] still get their figures, after the listed ones
    assert [f.section for f in made][0] == "task: blobs"
    assert {f.section for f in made} == {"task: blobs", "task: Blobs!", "task: quadratic",
                                         "stability traces"}
    assert all(isinstance(f, Figure) and f.title and f.caption for f in made)


def test_study_with_single_runs_and_sparse_summary_still_reports(tmp_path):
    runs, _ = fake_study()
    single = [StoredRun(r.run_key, "s", r.task, r.optimizer, "single", None, r.seed, r.lr, {},
                        {**r.record, "diagnostics": {}})
              for r in runs if r.phase == "final" and r.task == "quadratic" and r.seed == 0]
    paths = build_report(single, {"study": "s"}, tmp_path / "out")
    names = sorted(p.stem for p in paths["figures"].iterdir())
    assert names == ["quadratic_grad_norm", "quadratic_loss_vs_epochs", "quadratic_loss_vs_time"]
    assert "No ranking for this task" in paths["html"].read_text(encoding="utf-8")


def test_text_is_escaped_in_html_and_markdown(tmp_path):
    runs, summary = fake_study(name="<script>alert(1)</script> & co")
    small = [r for r in runs
             if (r.task, r.optimizer, r.phase) == ("quadratic", "gd", "final")]
    paths = build_report(small, {**summary, "tasks": ["quadratic"], "optimizers": ["gd"],
                                 "profiles": {}, "sensitivity": {}}, tmp_path / "out")
    page = paths["html"].read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "\\<script\\>" in paths["markdown"].read_text(encoding="utf-8")


def test_sensitivity_marks_zero_losses_and_a_chosen_lr_outside_the_trials():
    summary = {
        "ranking": {"t": [{"optimizer": "gd", "best_lr": 0.5},
                          {"optimizer": "adam", "best_lr": 0.01}]},
        "sensitivity": {"t": {
            "gd": [{"lr": 0.1, "final_train_loss": 0.3, "status": "completed"},
                   {"lr": 1.0, "final_train_loss": 0.0, "status": "completed"},
                   {"lr": 10.0, "final_train_loss": None, "status": "diverged"}],
            "adam": [{"lr": 0.01, "final_train_loss": 1e-4, "status": "completed"},
                     {"lr": 0.1, "final_train_loss": 5.0, "status": "diverged"}],
        }},
    }
    colors = figures_module.optimizer_colors(["gd", "adam"])
    made = figures_module._sensitivity_figure("t", summary, ["gd", "adam"], colors)
    suffix, title, caption, png = made
    assert suffix == "lr_sensitivity" and png.startswith(PNG_SIGNATURE)
    assert "exactly 0" in caption and "diverged" in caption
    assert figures_module._sensitivity_figure("t", {"sensitivity": {}}, ["gd"], colors) is None


def test_accuracy_target_is_drawn_and_named_in_the_caption():
    runs, summary = fake_study()
    summary["targets"]["blobs"] = {"metric": "test_accuracy", "value": 0.9}
    made = {f.name: f for f in study_figures([r for r in runs if r.task == "blobs"], summary)}
    assert "Target: test_accuracy ≥ 90.0%" in made["blobs_accuracy_vs_time"].caption


def test_optimizer_colours_are_distinct_and_stable_in_order():
    first = figures_module.optimizer_colors(["gd", "momentum", "adam"])
    assert list(first) == ["gd", "momentum", "adam"] and len(set(first.values())) == 3
    more = figures_module.optimizer_colors(["gd", "momentum", "adam", "rmsprop"])
    assert more["adam"] == first["adam"]
    many = figures_module.optimizer_colors([f"o{i}" for i in range(25)])
    assert len(set(many.values())) == 25


def test_tensorboard_event_files_hold_the_history(tmp_path):
    """--tensorboard writes one event directory per run whose train_loss scalars equal the
    history's (read back with TensorBoard's own EventAccumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gdlab.report.tensorboard import write_tensorboard

    runs, _ = fake_study()
    assert write_tensorboard(runs, tmp_path) == len(runs)
    run = runs[0]
    tag = f"trial{run.trial}" if run.phase == "tune" else f"seed{run.seed}"
    acc = EventAccumulator(str(tmp_path / run.study / run.task / run.optimizer / f"{run.phase}-{tag}"))
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train_loss")]
    want = [(r["step"], r["train_loss"]) for r in run.history if r.get("train_loss") is not None]
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def test_figures_drawn_in_worker_processes_are_the_same_images(tmp_path):
    """The tasks' figures drawn in two spawned processes equal those drawn in this one, byte for
    byte, in the same order and with the same names."""
    runs, summary = fake_study()
    here = figures_module.study_figures(runs, summary, workers=1)
    pooled = figures_module.study_figures(runs, summary, workers=2)
    assert [(f.section, f.name, f.png) for f in pooled] == [(f.section, f.name, f.png) for f in here]
    assert len(here) > 4
