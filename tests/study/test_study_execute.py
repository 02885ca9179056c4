"""Study runner: resumable, exactly-once storage, the fairness protocol, bad study files."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from gdlab.errors import GdlabError
from gdlab.store import RunStore
from gdlab.study.execute import expected_runs, run_study
from gdlab.config import RunConfig
from gdlab.study.spec import STUDY_SET_FIELDS, TASK_RUN_FIELDS, check_study_runs, load_study, parse_study

TINY = {
    "name": "tiny",
    "workers": 2,
    "seeds": [0, 1],
    "tuning": {"sampler": "grid", "trials": 3, "seed": 5},
    "tasks": [
        {"name": "lin", "task": "linreg", "budget": {"epochs": 30}, "target": {"train_loss": 0.6}},
        {"name": "iris", "task": "iris", "budget": {"epochs": 12}, "target": {"test_accuracy": 0.8}},
    ],
    "optimizers": [
        {"name": "gd", "optimizer": "gd", "regime": "full", "lr": {"low": 0.01, "high": 1.0}},
        {"name": "sgd", "optimizer": "gd", "regime": "stochastic", "lr": {"low": 0.001, "high": 0.1}},
    ],
}


def write_study(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_study_stores_every_run_once_and_reruns_nothing(tmp_path):
    """A full in-process run stores tasks x optimizers x (trials + seeds) runs; running it again
    adds nothing and trains nothing (every run is found by its key)."""
    spec = parse_study(TINY)
    db = tmp_path / "s.db"
    outcomes = run_study(spec, db, workers=1)
    assert expected_runs(spec) == 2 * 2 * (3 + 2)
    with RunStore(db) as store:
        runs = store.runs(study="tiny")
    assert len(runs) == expected_runs(spec)
    assert sum(o.ran for o in outcomes) == expected_runs(spec)
    again = run_study(spec, db, workers=1)
    assert sum(o.ran for o in again) == 0 and sum(o.skipped for o in again) == expected_runs(spec)
    # fairness: every optimizer of a task got the same number of trials at the same budget
    for task in ("lin", "iris"):
        counts = {o: sum(1 for r in runs if r.task == task and r.optimizer == o and r.phase == "tune")
                  for o in ("gd", "sgd")}
        assert counts == {"gd": 3, "sgd": 3}
        epochs = {round(r.final["epochs"], 6) for r in runs if r.task == task and r.final["status"] != "diverged"}
        assert len(epochs) == 1
    # final runs use the best tuning lr, one per seed
    for o in outcomes:
        finals = [r for r in runs if r.task == o.task and r.optimizer == o.optimizer and r.phase == "final"]
        assert sorted(r.seed for r in finals) == [0, 1] and all(r.lr == o.best_lr for r in finals)
        best = min((v, lr) for _, lr, v in o.trials if v is not None)
        assert o.best_lr == best[1]


def count_runs(db):
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_two_workers_store_the_same_runs_as_one(tmp_path):
    """Two worker processes take each pair's search and then each final run as its own job; the
    store ends with the same runs, the same best learning rates and the same losses as one
    worker's, and the outcomes count every run once. (Losses to float rounding: whether a tuning
    sweep runs stacked or one run after another is decided by a timing.)"""
    spec = parse_study(TINY)
    stores = {}
    for workers in (1, 2):
        outcomes = run_study(spec, tmp_path / f"{workers}.db", workers=workers)
        assert sum(o.ran for o in outcomes) == expected_runs(spec)
        with RunStore(tmp_path / f"{workers}.db") as store:
            stores[workers] = {r.run_key: (r.lr, r.final["train_loss"]) for r in store.runs(study="tiny")}
        assert len({(o.task, o.optimizer) for o in outcomes}) == len(outcomes) == 4
    assert stores[1].keys() == stores[2].keys() and len(stores[2]) == expected_runs(spec)
    for key, (lr, loss) in stores[1].items():
        assert stores[2][key][0] == lr and stores[2][key][1] == pytest.approx(loss, rel=1e-5)


def test_a_killed_study_resumes_and_stores_each_run_exactly_once(tmp_path):
    """SIGKILL the whole study (main process and its two workers) halfway, run it again: the study
    completes with every expected run stored exactly once and no orphan metric rows. (The kill
    comes as soon as three runs are stored; the one-sample SGD runs take long enough that most of
    the study is still to do.)"""
    study = TINY
    path = write_study(tmp_path / "tiny.yaml", study)
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "gdlab", "compare", str(path), "--store", str(db), "--no-report", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while count_runs(db) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = count_runs(db)
    expected = expected_runs(parse_study(study))
    assert 0 < killed_at < expected, "the study should be killed halfway"
    # The resume runs in this process (the same run_study the command calls), with one worker.
    outcomes = run_study(parse_study(study), db, workers=1)
    assert sum(o.skipped for o in outcomes) == killed_at
    with sqlite3.connect(db) as con:
        keys = [k for (k,) in con.execute("SELECT run_key FROM runs")]
        orphans = con.execute("SELECT COUNT(*) FROM metrics WHERE run_key NOT IN (SELECT run_key FROM runs)").fetchone()[0]
    assert len(keys) == expected and len(set(keys)) == expected and orphans == 0


def bad(**changes):
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for path, value in changes.items():
        target = data
        parts = path.split(".")
        for p in parts[:-1]:
            target = target[int(p)] if p.isdigit() else target[p]
        last = parts[-1]
        if value is None:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    "data, needle",
    [
        (bad(**{"optimizers.0.optimizer": "adm"}), "did you mean 'adam'"),
        (bad(**{"optimizers.0.lr": {"low": 1.0, "high": 0.1}}), "search space is empty"),
        (bad(**{"tasks.0.budget": {"epochs": -5}}), "budget.epochs must be > 0"),
        (bad(**{"tasks.0.task": None}), "needs 'task'"),
        (bad(**{"tasks.1.task": "irsi"}), "did you mean 'iris'"),
        (bad(**{"tuning.sampler": "grd"}), "did you mean 'grid'"),
        (bad(**{"tasks.0.target": {"train_los": 0.1}}), "did you mean 'train_loss'"),
        (bad(**{"optimizers.1.batch_size": 5000, "optimizers.1.regime": "minibatch"}), "larger than the training set"),
        (bad(**{"seeds": []}), "non-empty list"),
        (bad(**{"optimizers.0.params": {"momentum": 0.9}}), "unknown hyper-parameter 'momentum'"),
        (dict(TINY, colour="red"), "unknown field 'colour'"),
        (bad(**{"tasks.0.lr": 0.1}), "'lr' is set by the study"),
        (bad(**{"tasks.0.clip_norm": -1.0}), "clip_norm"),
    ],
)
def test_bad_study_files_fail_before_anything_is_written(tmp_path, data, needle):
    """Each mistake: one-line error naming it, exit status 2, no store file created."""
    path = write_study(tmp_path / "bad.yaml", data)
    db = tmp_path / "never.db"
    proc = subprocess.run([sys.executable, "-m", "gdlab", "compare", str(path), "--store", str(db)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert not db.exists()


def test_a_task_may_set_every_run_option_the_study_does_not_set():
    """The task fields come from RunConfig's schema: every field is either set by the study or a
    task field, and a task's schedule, clipping and L2 reach each of its runs' configs."""
    assert set(TASK_RUN_FIELDS) | set(STUDY_SET_FIELDS) == set(RunConfig.model_fields)
    assert not set(TASK_RUN_FIELDS) & set(STUDY_SET_FIELDS)
    spec = parse_study(bad(**{"tasks.0.schedule": "cosine", "tasks.0.clip_norm": 2.5, "tasks.0.l2": 0.01}))
    config = spec.run_config(spec.tasks[0], spec.optimizers[1], 0.05, 1)
    assert (config.schedule, config.clip_norm, config.l2) == ("cosine", 2.5, 0.01)
    assert (config.lr, config.regime, config.seed, config.max_epochs) == (0.05, "stochastic", 1, 30)


def test_load_study_validates_the_default_study():
    """studies/default.yaml parses and every pair builds."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = load_study(os.path.join(root, "studies", "default.yaml"))
    check_study_runs(spec)
    assert len(spec.tasks) == 5 and len(spec.optimizers) == 7


def test_run_keys_are_deterministic_and_distinct():
    """The same run gets the same key; changing the seed, lr, phase or a budget changes it."""
    spec = parse_study(TINY)
    t, o = spec.tasks[0], spec.optimizers[0]
    k = spec.run_key(t, o, "final", None, 0.1, 0)
    assert k == parse_study(TINY).run_key(t, o, "final", None, 0.1, 0)
    assert len({k, spec.run_key(t, o, "final", None, 0.1, 1), spec.run_key(t, o, "final", None, 0.2, 0),
                spec.run_key(t, o, "tune", 0, 0.1, 0)}) == 4
    other = parse_study(bad(**{"tasks.0.budget": {"epochs": 31}}))
    assert other.run_key(other.tasks[0], other.optimizers[0], "final", None, 0.1, 0) != k


def test_unknown_sampler_in_python_api():
    with pytest.raises(GdlabError):
        parse_study(bad(**{"tuning.sampler": "bayes"}))
