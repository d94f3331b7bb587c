"""A study shared by several tuner workers: who runs which trial, a worker that is gone, and two
workers on one storage finishing one search with no trial run twice."""
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from test_hpo import FIXED

from imgclf.hpo import storage
from imgclf.hpo.study import summary


def running_trial(study, worker=None):
    trial = study.ask()
    if worker is not None:
        trial.set_user_attr(storage.WORKER_ATTR, worker)
    return study.trials[trial.number]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_trial_is_orphaned_only_when_its_worker_is_gone():
    study = optuna.create_study()
    now = time.time()
    alive_here = running_trial(study, {"host": storage.HOST, "pid": os.getppid(), "time": now - 3600})
    dead_here = running_trial(study, {"host": storage.HOST, "pid": dead_pid(), "time": now})
    ours_from_before = running_trial(study, {"host": storage.HOST, "pid": os.getpid(), "time": now})
    fresh_elsewhere = running_trial(study, {"host": "other-host", "pid": 1, "time": now - 5})
    stale_elsewhere = running_trial(study, {"host": "other-host", "pid": 1, "time": now - storage.GRACE_S - 1})
    unstamped = running_trial(study)
    assert not storage.is_orphaned(alive_here, now)  # a live process on this host, however old its stamp
    assert storage.is_orphaned(dead_here, now)
    assert storage.is_orphaned(ours_from_before, now)
    assert not storage.is_orphaned(fresh_elsewhere, now)
    assert storage.is_orphaned(stale_elsewhere, now)
    assert not storage.is_orphaned(unstamped, now)  # its worker may be about to stamp it
    assert storage.is_orphaned(unstamped, now + storage.GRACE_S + 1)


def test_the_heartbeat_stamps_a_running_trial_until_it_ends():
    study = optuna.create_study()
    trial = study.ask()
    with storage.Heartbeat(trial, interval=0.05):
        first = study.trials[0].user_attrs[storage.WORKER_ATTR]["time"]
        time.sleep(0.3)
        later = study.trials[0].user_attrs[storage.WORKER_ATTR]["time"]
    assert later > first
    assert study.trials[0].user_attrs[storage.WORKER_ATTR]["pid"] == os.getpid()


def test_trials_past_the_count_are_surplus_and_failed_ones_do_not_count():
    study = optuna.create_study()
    first, second = study.ask(), study.ask()
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    third = study.ask()
    assert not storage.surplus(study, second, trials=2)
    assert not storage.surplus(study, third, trials=2)  # the failed one left room
    assert storage.surplus(study, study.ask(), trials=2)


def test_workers_started_together_on_a_new_database_all_open_it(tmp_path):
    """They race to create its tables; the loser of a race finds them on its next attempt."""
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    start = time.time() + 3  # after every interpreter has imported optuna
    code = ("import sys, time; from pathlib import Path; from imgclf.hpo import storage; "
            "time.sleep(max(0, float(sys.argv[2]) - time.time())); storage.open_storage(sys.argv[1], Path('.'))")
    workers = [subprocess.Popen([sys.executable, "-c", code, url, str(start)], stderr=subprocess.PIPE, text=True)
               for _ in range(6)]
    errors = [w.communicate(timeout=120)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * 6, "\n".join(errors)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_on_one_storage_finish_the_search_with_no_trial_run_twice(tmp_path, image_folders, kind):
    url = f"sqlite:///{tmp_path / 'tuning.db'}" if kind == "sqlite" else f"journal://{tmp_path / 'study.journal'}"

    def worker(name):
        command = [sys.executable, "-m", "imgclf.hpo.cli", "--data", str(image_folders), "--output",
                   str(tmp_path / name), "--trials", "8", "--pruner", "none", "--storage", url,
                   *[a for k, v in FIXED.items() for a in (f"--{k}", v)]]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def until_a_trial_begins(proc) -> str:
        lines = []
        while not re.match(r"trial \d+(/8| \(\d/8\)) lr=", line := proc.stdout.readline()):
            assert line, "the worker ended before it began a trial:\n" + "".join(lines)
            lines.append(line)
        return "".join(lines) + line

    # Both take part however their start-up times differ: the first is paused in its first trial's
    # training (it holds no storage lock there) while the second starts and begins a trial.
    first = worker("worker-1")
    head = [until_a_trial_begins(first)]
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = worker("worker-2")
        head.append(until_a_trial_begins(second))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    workers = [first, second]
    outputs = [start + w.communicate(timeout=900)[0] for start, w in zip(head, workers)]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(outputs)
    # "trial 3/8 complete ...", or "trial 6 (5/8) complete ..." when others' trials came between
    ran = [{int(n) for n in re.findall(r"^trial (\d+)(?:/8| \(\d/8\)) (?:complete|pruned)", out, re.M)}
           for out in outputs]
    assert ran[0] and ran[1], "each worker ran trials: " + "\n".join(outputs)
    assert not ran[0] & ran[1]  # none run by both
    trials = summary(tmp_path / "worker-1", storage=url)
    done = [t for t in trials if t["state"] in ("complete", "pruned")]
    assert len(done) == 8 and {t["trial"] for t in done} == ran[0] | ran[1]
    points = [tuple(sorted(t["params"].items())) for t in done]
    assert len(set(points)) == 8  # no point drawn twice
    # both workers name the same best trial
    assert len({re.search(r"^best trial (\d+):", out, re.M).group(1) for out in outputs}) == 1
