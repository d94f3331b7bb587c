"""Where a search's study lives, and which of its running trials still have a worker.

A search keeps its study in `<output>/study.journal` (Optuna's journal file) unless `--storage`
names a shared one: an RDB URL (`sqlite:///tuning.db`, `postgresql://...`, `mysql://...`: Optuna's
RDBStorage) or `journal:///path/study.journal` on a filesystem that every worker mounts. Workers
given the same storage run one study: each asks the study for its own trials, so no trial runs twice.

A running trial names its worker (host, pid) and is stamped every `HEARTBEAT_S` seconds. It is
interrupted when its worker is gone: on this host, the pid no longer runs; on another, the stamp is
older than `GRACE_S`. Whichever worker sees that fails the trial and queues its parameters again,
the rule a single search has always had for a trial killed with it.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

STUDY_FILE = "study.journal"
JOURNAL_SCHEME = "journal://"
HEARTBEAT_S = 10.0
GRACE_S = 60.0
WORKER_ATTR = "worker"
HOST = socket.gethostname()
SCHEMA_ATTEMPTS = 3


def open_storage(url: str | None, output: Path) -> optuna.storages.BaseStorage:
    """The study's storage: the search's own journal file, or the shared one that `url` names."""
    if not url:
        return JournalStorage(JournalFileBackend(str(output / STUDY_FILE)))
    if url.startswith(JOURNAL_SCHEME):
        path = url[len(JOURNAL_SCHEME):]
        # the open(2)-based lock works on network filesystems, where a symlink lock may not
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    # several workers write one SQLite file: wait for its lock rather than fail at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine)
        except sqlalchemy.exc.DBAPIError:
            # workers started together on a new database race to create its tables ("table ...
            # already exists"); the next attempt finds them
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


class Heartbeat:
    """Names this worker on a running trial and stamps it on a thread until the trial ends."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_S):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trial-heartbeat", daemon=True)

    def beat(self) -> None:
        self.trial.set_user_attr(WORKER_ATTR, {"host": HOST, "pid": os.getpid(), "time": time.time()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # runs, as another user
        return True
    return True


def is_orphaned(trial: FrozenTrial, now: float | None = None, grace_s: float = GRACE_S) -> bool:
    """Whether a running trial's worker is gone (see the module's docstring)."""
    now = time.time() if now is None else now
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker is None:  # asked, not yet stamped: its worker has a grace period to start it
        started = trial.datetime_start or datetime.now()
        return now - started.timestamp() > grace_s
    if worker["host"] == HOST:
        # this process runs no trial while it looks, so one of its own is left from an earlier search
        return worker["pid"] == os.getpid() or not _pid_runs(worker["pid"])
    return now - worker["time"] > grace_s


def surplus(study: optuna.Study, trial: optuna.Trial, trials: int) -> bool:
    """Whether `trial` is past the search's count: workers that asked at the same moment can
    overshoot it, and trial numbers, handed out by the storage, say who came last."""
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number <= trial.number and t.state != TrialState.FAIL]
    return len(ahead) > trials
