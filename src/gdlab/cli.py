"""The ``gdlab`` command: train, demo, list.

User mistakes (GdlabError, bad arguments) print one line ``gdlab: error: ...`` on stderr and exit
with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gdlab import __version__
from gdlab.config import RunConfig, flag_arguments, load_config_file
from gdlab.errors import GdlabError, NonFiniteError, WorkerDiedError

EXIT_USER_ERROR = 2
PIPE_WIDTH = 120


def _console(stderr: bool = False) -> Console:
    """A console without syntax highlighting, 120 columns wide on a file or pipe so tables are not squeezed."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one-line GdlabErrors instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise GdlabError(f"{message}; see '{self.prog} --help'")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The run options, one flag per RunConfig field (generated from the schema), then the command's own options."""
    g = p.add_argument_group("run options (config fields; see docs/cli.md)")
    for flag, kwargs in flag_arguments().values():
        g.add_argument(flag, **kwargs)
    g = p.add_argument_group("command")
    g.add_argument("--config", metavar="FILE", help="YAML or JSON file of config fields; flags override it")
    g.add_argument("--momentum", type=float, help="momentum coefficient (momentum, nesterov, rmsprop)")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="other optimizer hyper-parameter, e.g. --opt betas=[0.9,0.99]; repeatable")
    g.add_argument("--precision", choices=tuple(PRECISIONS),
                   help="float32 | float64 (parameters and data) | bf16 (float32 parameters, bf16 autocast forward)")
    g.add_argument("--resume", metavar="DIR", help="continue the run checkpointed in DIR (its config; results go to DIR)")
    g.add_argument("--json", action="store_true", help="print the run record as JSON on stdout")
    g.add_argument("--out", metavar="DIR", help="save run.json and params.pt into DIR")
    g.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def _parse_opt(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GdlabError(f"--opt '{item}' is not KEY=VALUE; write e.g. --opt eps=1e-6")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise GdlabError(f"--opt {key}: cannot read value '{value}'; give a number or a list like [0.9,0.99]") from None
    return out


# --precision NAME -> the config's (dtype, autocast).
PRECISIONS = {"float32": ("float32", None), "float64": ("float64", None), "bf16": ("float32", "bfloat16")}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Layer the config file (if any) under the flags given and validate; a flag not given is
    None, so the file's value, else the field's default, applies."""
    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    data.update({name: getattr(args, name) for name in flag_arguments() if getattr(args, name) is not None})
    precision = getattr(args, "precision", None)
    if precision is not None:
        dtype, autocast = PRECISIONS[precision]
        if args.dtype is not None and args.dtype != dtype:
            raise GdlabError(f"--precision {precision} uses {dtype} parameters but --dtype {args.dtype} "
                             "was given; drop one of them")
        data["dtype"], data["autocast"] = dtype, autocast
    params = dict(data.get("optimizer_params") or {})
    if args.momentum is not None:
        params["momentum"] = args.momentum
    params.update(_parse_opt(args.opt))
    if params:
        data["optimizer_params"] = params
    return RunConfig.from_dict(data)


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


_SUMMARY_ROWS = (
    ("status", "status", None),
    ("steps", "step", None),
    ("epochs (grad evals / N)", "epochs", ".2f"),
    ("train time (s)", "wall_time_s", ".2f"),
    ("train loss (objective)", "train_loss", ".4g"),
    ("full gradient norm", "grad_norm", ".3g"),
    ("test loss", "test_loss", ".4g"),
    ("train accuracy", "train_accuracy", "%"),
    ("test accuracy", "test_accuracy", "%"),
)


def _summary_table(runs: list[tuple[str, dict[str, Any]]]) -> Table:
    """Metrics as rows, runs as columns: fits a narrow terminal and compares runs side by side."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    for label, _ in runs:
        table.add_column(label, justify="right")
    for name, key, spec in _SUMMARY_ROWS:
        values = [f.get(key) for _, f in runs]
        if all(v is None for v in values):
            continue
        if spec == "%":
            cells = ["-" if v is None else f"{100 * v:.1f}%" for v in values]
        else:
            cells = [_fmt(v, spec or "") for v in values]
        table.add_row(name, *cells)
    return table


def _make_progress(console: Console) -> Progress:
    fields = "epochs {task.fields[epochs]}  loss {task.fields[loss]}  |g| {task.fields[gnorm]}"
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(fields),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)


def _progress_callback(progress: Progress, label: str, total: int | None) -> Any:
    """A training callback that moves a progress bar (the engine, and torch, load only here: the
    CLI starts without them, and so do the study workers' parent and the report)."""
    from gdlab.engine.loop import Callback, StepInfo

    class _Progress(Callback):
        def __init__(self) -> None:
            self.task = progress.add_task(label, total=total, loss="-", gnorm="-", epochs="0", rate="")

        def on_step(self, info: StepInfo) -> None:
            rate = f"{info.step / info.wall_time_s:,.0f} steps/s" if info.wall_time_s > 0 else ""
            progress.update(self.task, completed=info.step, loss=f"{info.batch_loss:.4g}",
                            gnorm=f"{info.grad_norm:.3g}", epochs=f"{info.epochs:.2f}", rate=rate)

    return _Progress()


MAX_EVENTS_SHOWN = 15
EXIT_TRAINING_FAILED = 1


def _join_process_group(args: argparse.Namespace, config: RunConfig) -> None:
    """Under torchrun, join the process group; ranks other than 0 print and write nothing."""
    from gdlab import distributed

    distributed.init_from_env(config.device)
    if not distributed.is_main():
        args.quiet, args.json, args.out = True, False, None


def _train(args: argparse.Namespace, config: RunConfig, auto_sharpness: bool = False,
           resume: dict[str, Any] | None = None) -> Any:
    """Prepare (all validation first), train with a progress bar, save; returns the result."""
    from gdlab.run import check_output_dir, prepare, restore, run, save_run

    _join_process_group(args, config)
    err = _console(stderr=True)
    if config.checkpoint_every and not args.out:
        raise GdlabError("--checkpoint-every needs --out DIR (the checkpoint is DIR/checkpoint.pt)")
    if args.out:
        check_output_dir(args.out)
    prepared = prepare(config)
    if resume is not None:
        restore(prepared, resume)
    if auto_sharpness and config.sharpness_every is None:
        config = config.replace(sharpness_every=max(1, (prepared.expected_steps or 200) // 20))
        prepared.config = config
    if not args.quiet:
        with _make_progress(err) as progress:
            cb = _progress_callback(progress, f"{config.optimizer} / {config.regime}", prepared.expected_steps)
            result = run(config, callbacks=[cb], prepared=prepared, checkpoint_dir=args.out, resume=resume)
            progress.update(cb.task, total=result.final["step"], completed=result.final["step"])
    else:
        result = run(config, prepared=prepared, checkpoint_dir=args.out, resume=resume)
    if args.out:
        save_run(result, args.out)
    return result


def _print_run(console: Console, command: str, result: Any, record: dict[str, Any]) -> None:
    cfg = result.config
    console.print(f"gdlab {command}: {cfg['data'] or cfg['task']}, model {cfg['model']}, loss {cfg['loss']}")
    console.print(_summary_table([(f"{cfg['optimizer']} lr={cfg['lr']:g} {cfg['regime']}", record["final"])]))


def _print_events(console: Console, events: list[dict[str, Any]]) -> None:
    for event in events[:MAX_EVENTS_SHOWN]:
        console.print(f"event step {event['step']}: {event['kind']}: {event['detail']}")
    if len(events) > MAX_EVENTS_SHOWN:
        console.print(f"... and {len(events) - MAX_EVENTS_SHOWN} more events (see --json)")


def _config_or_resume(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any] | None]:
    """The config from the flags, or with --resume DIR the checkpoint's own config (results go back to DIR)."""
    if not args.resume:
        return config_from_args(args), None
    from gdlab.checkpoint import read_checkpoint

    given = [flag for name, (flag, _) in flag_arguments().items() if getattr(args, name) is not None]
    given += ["--precision"] * (args.precision is not None)
    if given or args.config:
        flags = ", ".join(given) or "--config"
        raise GdlabError(f"--resume continues the checkpointed run with its own config; drop {flags}")
    payload = read_checkpoint(args.resume)
    args.out = args.resume
    return RunConfig.from_dict(payload["config"]), payload


def cmd_train(args: argparse.Namespace) -> int:
    config, resume = _config_or_resume(args)
    result = _train(args, config, resume=resume)
    record = result.to_record()
    if args.json:
        print(json.dumps(record))
    if not args.quiet:
        target = _console(stderr=args.json)
        _print_run(target, "train", result, record)
        _print_events(target, record["events"])
        if args.out:
            target.print(f"saved run.json and params.pt to {args.out}")
    return 0


def cmd_stability(args: argparse.Namespace) -> int:
    from gdlab.diagnostics.summary import first_problem, layer_rows, sharpness_rows

    if args.health_every is None:
        args.health_every = 1
    config = config_from_args(args)
    result = _train(args, config, auto_sharpness=True)
    record = result.to_record()
    if args.json:
        print(json.dumps(record))
    if args.quiet:
        return 0
    con = _console(stderr=args.json)
    _print_run(con, "stability", result, record)
    problem = first_problem(record["events"])
    if problem is None:
        con.print("health: no vanishing or exploding gradients, no non-finite values, "
                  "sharpness never above 2/lr")
    else:
        where = f" in {problem['layer']}" if problem.get("layer") else ""
        con.print(f"health: first problem at step {problem['step']}: {problem['kind']}{where}: {problem['detail']}")
    rows = layer_rows(record["final"].get("health"))
    if rows:
        con.print("\ngradient norm per parameter tensor over the recorded steps:")
        t = Table(box=box.SIMPLE_HEAD)
        t.add_column("parameter", no_wrap=True)
        for col in ("first", "last", "min", "max", "flag"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(r["layer"], *(_fmt(r[k], ".3g") for k in ("first", "last", "min", "max")),
                      ", ".join(r["flags"]) or "ok")
        con.print(t)
    srows = sharpness_rows(record["diagnostics"])
    if srows:
        con.print("sharpness (top Hessian eigenvalue of the training loss) against 2/lr:")
        t = Table(box=box.SIMPLE_HEAD)
        for col in ("step", "sharpness", "2/lr", "GD at this lr"):
            t.add_column(col, justify="right")
        for r in srows:
            t.add_row(str(r["step"]), _fmt(r["sharpness"], ".4g"), _fmt(r["two_over_lr"], ".4g"),
                      r["side"] or "-")
        con.print(t)
    # per-layer health events are summarised by the table above
    _print_events(con, [e for e in record["events"] if e.get("layer") is None])
    if args.out:
        con.print(f"saved run.json and params.pt to {args.out}")
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    from gdlab.api import run_sharpness

    result = run_sharpness(args.run, k=args.k, iters=args.iters, trace=args.trace)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("model", "data", "parameters")}))
        return 0
    con = _console()
    con.print(f"gdlab sharpness: {args.run} ({result['model']} on {result['data']}, "
              f"{result['parameters']} parameters, {result['hvps']} Hessian-vector products)")
    t = Table(box=box.SIMPLE_HEAD)
    t.add_column("")
    t.add_column("value", justify="right")
    lr, top, side, trace = result["lr"], result["sharpness"], result["side"], result["trace"]
    t.add_row("top eigenvalues", ", ".join(f"{v:.6g}" for v in result["top_eigenvalues"]))
    t.add_row("sharpness (lambda_max)", f"{top:.6g}")
    t.add_row("2 / lambda_max (largest stable lr)", _fmt(result["two_over_sharpness"], ".4g"))
    t.add_row("lr of the run", f"{lr:g}")
    t.add_row("2 / lr", f"{2.0 / lr:.4g}")
    if trace is not None:
        t.add_row("trace (Hutchinson)", f"{trace['estimate']:.4g} +- {trace['stderr']:.2g}")
    t.add_row("GD at the run's lr", side + (" (sharpness < 2/lr)" if side == "stable" else " (sharpness >= 2/lr)"))
    con.print(t)
    return 0


def _ranking_tables(console: Console, summary: dict[str, Any]) -> None:
    """One table per task: optimizers ranked by mean final training loss over seeds (± half the
    95% interval), test accuracy, median time and epochs to target and how many runs reached it."""
    for task in summary["tasks"]:
        target = summary["targets"].get(task, {})
        sign = ">=" if target.get("metric") == "test_accuracy" else "<="
        console.print(f"\n{task}: target {target.get('metric')} {sign} {_fmt(target.get('value'))}")
        rows = summary["ranking"].get(task, [])
        with_acc = any(r["final_test_accuracy"]["mean"] is not None for r in rows)
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        columns = ["optimizer", "lr", "train loss"] + (["test acc"] if with_acc else [])
        for col in columns + ["to target", "epochs", "reached", "div."]:
            t.add_column(col, justify="left" if col == "optimizer" else "right", no_wrap=True)
        for row in rows:
            loss, acc = row["final_train_loss"], row["final_test_accuracy"]
            loss_text = "-" if loss["mean"] is None else f"{loss['mean']:.4g}"
            if loss["mean"] is not None and loss["ci_high"] is not None and loss["n"] > 1:
                loss_text += f"±{(loss['ci_high'] - loss['ci_low']) / 2:.1g}"
            ttt, ett = row["time_to_target"], row["evals_to_target"]
            cells = [f"{row['rank']}. {row['optimizer']}", _fmt(row["best_lr"], ".2g"), loss_text]
            if with_acc:
                cells.append("-" if acc["mean"] is None else f"{100 * acc['mean']:.1f}%")
            cells += ["never" if ttt["median"] is None else f"{ttt['median']:.2g}s",
                      "never" if ett["median"] is None else f"{ett['median']:.3g}",
                      f"{ttt['reached']}/{ttt['runs']}", f"{100 * row['diverged_fraction']:.0f}%"]
            t.add_row(*cells)
        console.print(t)


def _write_report(store_path: str, study: str, out_dir: str, console: Console,
                  tensorboard: str | None = None) -> dict[str, Any]:
    from gdlab.report.study import write_report

    paths, summary = write_report(store_path, study, out_dir, tensorboard=tensorboard)
    if tensorboard:
        console.print(f"TensorBoard: {paths['tensorboard_runs']} runs under {tensorboard} "
                      f"(tensorboard --logdir {tensorboard})")
    _ranking_tables(console, summary)
    console.print(f"\nreport: {paths['html']}  (Markdown summary: {paths['markdown']}, figures in {paths['figures']})")
    return summary


def _single_process(command: str) -> None:
    if "WORLD_SIZE" not in os.environ:  # not under torchrun (and gdlab.distributed would load torch)
        return
    from gdlab.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise GdlabError(f"gdlab {command} runs in one process (it starts its own workers); "
                         "under torchrun use gdlab train or gdlab stability")


def cmd_compare(args: argparse.Namespace) -> int:
    from gdlab.store import DEFAULT_STORE_PATH

    _single_process("compare")
    from gdlab.study.execute import expected_runs, run_study
    from gdlab.study.spec import load_study

    spec = load_study(args.study)
    if args.workers is not None and args.workers < 1:
        raise GdlabError(f"--workers must be >= 1, got {args.workers}")
    store_path = args.store or spec.store or DEFAULT_STORE_PATH
    out_dir = args.out or spec.report or "report"
    err, con = _console(stderr=True), _console()
    workers = args.workers or spec.workers
    progress = _make_study_progress(err, args.quiet)
    task_id = progress.add_task("runs", total=expected_runs(spec))

    def started() -> None:  # the study checked (a bad one is one line of error), its runs begin
        err.print(f"study '{spec.name}': {len(spec.tasks)} tasks x {len(spec.optimizers)} optimizers, "
                  f"{spec.sampler} search of {spec.trials} trials each, best lr re-run over seeds "
                  f"{list(spec.seeds)}: {expected_runs(spec)} runs, {workers} worker(s), store {store_path}")
        progress.start()

    try:
        run_study(spec, store_path, workers=workers, check=True, on_start=started,
                  on_progress=lambda done, total: progress.update(task_id, completed=done))
    finally:
        progress.stop()
    if not args.no_report:
        _write_report(store_path, spec.name, out_dir, con, tensorboard=args.tensorboard)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from gdlab.store import RunStore

    study = args.study
    if study is None:
        with RunStore(args.store, create=False) as store:
            names = store.studies()
        if len(names) != 1:
            raise GdlabError(f"store '{args.store}' holds {len(names)} studies "
                             f"({', '.join(names) or 'none'}); choose one with --study NAME")
        study = names[0]
    _write_report(args.store, study, args.out, _console(), tensorboard=args.tensorboard)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gdlab.store import RunStore, export_query

    with RunStore(args.store, create=False) as store:
        rows = export_query(store, args.query, args.output)
    _console().print(f"wrote {rows} rows to {args.output}")
    return 0


def _make_study_progress(console: Console, quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet)


def cmd_demo(args: argparse.Namespace) -> int:
    from gdlab.run import check_output_dir, save_run
    from gdlab.study.demo import plan_demo, run_demo

    _single_process("demo")
    err, out = _console(stderr=True), _console()
    if args.epochs is not None and args.epochs <= 0:
        raise GdlabError(f"--epochs must be > 0, got {args.epochs}")
    extra = {"device": args.device} if args.device else {}
    if args.out:
        check_output_dir(args.out)
    planned = plan_demo(args.task, epochs=args.epochs, seed=args.seed, model=args.model, extra=extra)
    with _make_progress(err) as progress:
        def callbacks_for(entry: Any, prepared: Any) -> list[Any]:
            return [] if args.quiet else [_progress_callback(progress, entry.label, prepared.expected_steps)]

        results = run_demo(planned, callbacks_for=callbacks_for)
    records = [(entry, res.to_record()) for entry, res in results]
    if args.out:
        for entry, res in results:
            save_run(res, f"{args.out}/{entry.regime}")
    if args.json:
        print(json.dumps({"runs": [rec for _, rec in records]}))
    target = err if args.json else out
    first = records[0][1]
    target.print(f"gdlab demo: task {first['config']['task']}, model {first['config']['model']}, "
                 f"{args.epochs:g} epochs of gradient evaluations each, seed {args.seed}")
    target.print(_summary_table([(f"{e.label}\nlr={e.lr:g}", rec["final"]) for e, rec in records]))
    target.print("Same budget of gradient evaluations (epochs) for each regime; wall time counts training "
                 "only. Batch GD takes one exact step per epoch, SGD takes N noisy ones.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from gdlab.data import list_tasks
    from gdlab.engine.regimes import REGIMES
    from gdlab.data.presets import list_presets
    from gdlab.models import MODEL_FAMILIES
    from gdlab.optim import LOSSES, OPTIMIZERS
    from gdlab.optim.registry import WEIGHT_DECAY_NOTE
    from gdlab.optim.schedules import SCHEDULES

    out = _console()
    t = Table(title="tasks (--task)", title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("name", no_wrap=True)
    t.add_column("default model / loss", no_wrap=True)
    t.add_column("description")
    for spec in list_tasks():
        t.add_row(spec.name, f"{spec.default_model}\n{spec.default_loss}", spec.description)
    for preset in list_presets():
        t.add_row(preset.name, f"{preset.default_model}\n{preset.default_loss}",
                  f"{preset.description} (local files: --data-dir or $GDLAB_DATA_DIR)")
    out.print(t)
    for title, mapping in (
        ("models (--model)", MODEL_FAMILIES),
        ("optimizers (--optimizer)", {k: v.description for k, v in OPTIMIZERS.items()}),
        ("regimes (--regime)", REGIMES),
        ("losses (--loss)", LOSSES),
        ("lr schedules (--schedule)", SCHEDULES),
    ):
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
        t.add_column("name", no_wrap=True)
        t.add_column("description")
        for name, text in mapping.items():
            t.add_row(name, text)
        out.print(t)
        if title.startswith("optimizers"):
            out.print(f"  note: {WEIGHT_DECAY_NOTE}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gdlab", description="Full-batch gradient descent and its variants: train, diagnose, compare.")
    parser.add_argument("--version", action="version", version=f"gdlab {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.set_defaults(func=func)
        return p

    _add_train_arguments(command("train", cmd_train, "train one model and print a summary (or --json)"))
    _add_train_arguments(command("stability", cmd_stability,
                                 "train with gradient health and sharpness tracking, print a health summary"))

    p = command("sharpness", cmd_sharpness, "top Hessian eigenvalues of the training loss at a saved run's parameters")
    p.add_argument("--run", required=True, metavar="DIR", help="a directory written by --out (run.json, params.pt)")
    p.add_argument("--k", type=int, default=3, help="how many top eigenvalues (Lanczos), default 3")
    p.add_argument("--iters", type=int, default=50, help="Lanczos iterations (HVPs), default 50")
    p.add_argument("--trace", action="store_true", help="also estimate the Hessian trace (Hutchinson)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")

    p = command("demo", cmd_demo, "compare batch, mini-batch and stochastic GD on one task")
    p.add_argument("--task", default="digits", help="task to train, default digits")
    p.add_argument("--model", help="model spec (task default)")
    p.add_argument("--epochs", type=float, default=20.0, help="gradient evaluations / N per run, default 20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu | cuda | auto")
    p.add_argument("--json", action="store_true", help="print the run records as JSON on stdout")
    p.add_argument("--out", metavar="DIR", help="save each run into DIR/<regime>")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = command("compare", cmd_compare, "run a study (tasks x optimizers, tuned lr, seeds) and write its report")
    p.add_argument("study", metavar="STUDY.yaml", help="study file, e.g. studies/default.yaml")
    p.add_argument("--workers", type=int, help="parallel worker processes (default: the study's)")
    p.add_argument("--store", metavar="DB", help="SQLite run store (default: the study's, else runs/gdlab.db)")
    p.add_argument("--out", metavar="DIR", help="report directory (default: the study's, else report/)")
    p.add_argument("--no-report", action="store_true", help="run the study, write no report")
    p.add_argument("--tensorboard", metavar="DIR", help="also write every run as TensorBoard event files into DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command("report", cmd_report, "write the HTML/Markdown report of a study from the run store")
    p.add_argument("store", metavar="DB", help="SQLite run store, e.g. runs/gdlab.db")
    p.add_argument("--study", help="study name (needed when the store holds several)")
    p.add_argument("--out", metavar="DIR", default="report", help="report directory, default report/")
    p.add_argument("--tensorboard", metavar="DIR", help="also write every run as TensorBoard event files into DIR")

    p = command("export", cmd_export, "export a table or a SELECT query of the run store to CSV or Parquet")
    p.add_argument("store", metavar="DB", help="SQLite run store")
    p.add_argument("query", help="a table (runs, metrics, events, diagnostics, studies) or a SELECT statement")
    p.add_argument("output", metavar="FILE", help="output file, .csv or .parquet")

    command("list", cmd_list, "show tasks, models, optimizers, regimes and losses")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gdlab`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        try:
            return args.func(args)
        finally:
            if "gdlab.distributed" in sys.modules:  # a process group exists only if it was imported
                sys.modules["gdlab.distributed"].shutdown()
    except GdlabError as exc:
        print(f"gdlab: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except WorkerDiedError as exc:
        print(f"gdlab: study interrupted: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except NonFiniteError as exc:
        print(f"gdlab: training stopped (nonfinite_policy raise): {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED


if __name__ == "__main__":
    sys.exit(main())
