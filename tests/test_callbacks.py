"""The training loop's observer interface: call order, step records, a callback that stops the job, one
that fails and turns itself off, and the abort event of a job ended by an exception or SIGTERM."""
import logging
import os
import signal

import pytest
from test_train import job_env

from imgclf.callbacks import Callback, FailSafeCallback, fail_safe
from imgclf.train.engine import SIGTERM_EXIT
from imgclf.train.job import main, parse_hyperparameters


class Recorder(Callback):
    def __init__(self, stop_after_epoch: int | None = None):
        self.calls, self.steps, self.stop_after_epoch = [], [], stop_after_epoch

    def on_train_begin(self, job):
        self.calls.append(("train_begin", type(job.model).__name__))

    def on_epoch_begin(self, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_step_end(self, record):
        self.steps.append(record)

    def on_evaluate_begin(self, split):
        self.calls.append(("evaluate_begin", split))

    def on_evaluate_end(self, split, metrics):
        self.calls.append(("evaluate_end", split, sorted(metrics)))

    def on_epoch_end(self, epoch, metrics):
        self.calls.append(("epoch_end", epoch, metrics["valid_acc"] == pytest.approx(metrics["valid_acc"])))
        if epoch == self.stop_after_epoch:
            raise RuntimeError("stop here")

    def on_train_end(self, history):
        self.calls.append(("train_end", len(history)))

    def on_train_abort(self, reason):
        self.calls.append(("train_abort", reason))


def test_callbacks_see_the_job_in_order(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders)
    recorder = Recorder()
    assert main(parse_hyperparameters(env.hyperparameters), env, callbacks=[recorder]) == 0
    valid = [("evaluate_begin", "valid"), ("evaluate_end", "valid", ["valid_acc", "valid_loss"])]
    assert recorder.calls == [
        ("train_begin", "ResNet"),
        ("epoch_begin", 1), *valid, ("epoch_end", 1, True),
        ("epoch_begin", 2), *valid, ("epoch_end", 2, True),
        ("evaluate_begin", "test"), ("evaluate_end", "test", ["test_acc", "test_loss"]),
        ("train_end", 3),
    ]
    # 36 training images in batches of 8, last partial batch dropped: 4 steps an epoch
    assert [(r.epoch, r.step) for r in recorder.steps] == [(e, s) for e in (1, 2) for s in (1, 2, 3, 4)]
    assert all(r.batch_size == 8 and r.loss.ndim == 0 for r in recorder.steps)
    assert all(min(r.data_s, r.forward_s, r.backward_s, r.optimizer_s) >= 0 for r in recorder.steps)
    assert all(r.forward_s > 0 and r.backward_s > 0 for r in recorder.steps)


def test_a_callback_can_end_the_job(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders)
    recorder = Recorder(stop_after_epoch=1)
    with pytest.raises(RuntimeError, match="stop here"):
        main(parse_hyperparameters(env.hyperparameters), env, callbacks=[recorder])
    # the job's failure reason reaches every callback once, as the failure file will give it
    assert recorder.calls[-2:] == [("epoch_end", 1, True), ("train_abort", "AlgorithmError: RuntimeError: stop here")]
    assert not (env.model_dir / "model.pt").exists()


class Stopper(Callback):
    """Sends the job SIGTERM during its second step, as `docker stop` would."""

    def on_step_end(self, record):
        if record.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_is_an_abort_with_its_reason(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders)
    recorder = Recorder()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = main(parse_hyperparameters(env.hyperparameters), env, callbacks=[Stopper(), recorder])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == SIGTERM_EXIT
    assert recorder.calls[-1] == ("train_abort", "stopped by SIGTERM; the checkpoint resumes the job")
    assert "train_end" not in [c[0] for c in recorder.calls]


class Broken(Callback):
    def on_train_abort(self, reason):
        raise OSError("disk full")


def test_a_failing_abort_callback_does_not_hide_the_reason(tmp_path, image_folders):
    env = job_env(tmp_path, image_folders)
    recorder = Recorder(stop_after_epoch=1)
    with pytest.raises(RuntimeError, match="stop here"):
        main(parse_hyperparameters(env.hyperparameters), env, callbacks=[Broken(), recorder])
    assert recorder.calls[-1][0] == "train_abort"


class FailsAtStep2(FailSafeCallback):
    what = "the step counter"

    def __init__(self):
        self.steps, self.epochs = [], []

    @fail_safe
    def on_step_end(self, record):
        self.steps.append(record.step)
        if record.step == 2:
            raise ZeroDivisionError("a bug in a callback")

    @fail_safe
    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)


def test_a_failing_fail_safe_callback_logs_once_turns_itself_off_and_training_goes_on(tmp_path, image_folders,
                                                                                        caplog):
    env = job_env(tmp_path, image_folders)
    failing, recorder = FailsAtStep2(), Recorder()
    with caplog.at_level(logging.DEBUG, logger="imgclf.callbacks"):
        assert main(parse_hyperparameters(env.hyperparameters), env, callbacks=[failing, recorder]) == 0
    assert failing.off and failing.steps == [1, 2] and failing.epochs == []  # nothing called after the failure
    assert len(recorder.steps) == 8 and recorder.calls[-1] == ("train_end", 3)  # the others saw the whole job
    assert (env.model_dir / "model.pt").is_file()
    records = [r for r in caplog.records if "the step counter" in r.getMessage()]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "the step counter stopped (training goes on): ZeroDivisionError: a bug in a callback"]
    assert warnings[0].exc_info is None  # one line, no traceback
    assert [r.exc_info[0] for r in records if r.levelno == logging.DEBUG] == [ZeroDivisionError]  # it is at debug
