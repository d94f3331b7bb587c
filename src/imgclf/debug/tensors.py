"""Tensors saved with smdebug, so that `smdebug.trials.create_trial(path)` reads them.

On SageMaker the job's `debughookconfig.json` (written when the estimator has a
DebuggerHookConfig) says where (`LocalPath`, uploaded to `S3OutputPath`) and what
(`CollectionConfigurations`, `HookParameters` such as `save_interval`). Elsewhere the
`debug-collections` and `debug-save-interval` hyperparameters ask for the same, saved under the
output data dir's `tensors/`.

smdebug is optional: when it is missing, cannot register its hooks, or fails during a step, the
job logs why and trains on without tensors.
"""
from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..callbacks import FailSafeCallback, fail_safe
from ..names import DEBUG_SAVE_INTERVAL, SAGEMAKER_BASE_DIR

log = logging.getLogger("imgclf.debug")

HOOK_CONFIG_FILE = "debughookconfig.json"
DEFAULT_LOCAL_PATH = f"{SAGEMAKER_BASE_DIR}/output/tensors"  # SageMaker's default LocalPath
COLLECTIONS = ("losses", "weights", "gradients", "biases")


@dataclass(frozen=True)
class HookSettings:
    """Where and what to save. `config` is debughookconfig.json as SageMaker wrote it, when it did."""

    out_dir: Path
    config: dict | None = None
    collections: tuple[str, ...] = ()
    save_interval: int = DEBUG_SAVE_INTERVAL

    @classmethod
    def from_job(cls, args, env) -> HookSettings | None:
        """From the job's config dir, else from the hyperparameters; None when nothing asks for tensors."""
        config_dir = getattr(env, "config_dir", None)
        path = Path(config_dir) / HOOK_CONFIG_FILE if config_dir else None
        if path is not None and path.is_file():
            try:
                config = json.loads(path.read_text())
            except ValueError as e:
                log.warning("tensors not saved: %s is not JSON (%s)", path, e)
                return None
            return cls(out_dir=Path(config.get("LocalPath") or DEFAULT_LOCAL_PATH), config=config)
        names = tuple(c.strip() for c in (args.debug_collections or "").split(",") if c.strip())
        if not names:
            return None
        return cls(out_dir=env.output_data_dir / "tensors", collections=names, save_interval=args.debug_save_interval)


class TensorSaver(FailSafeCallback):
    """An smdebug hook on the model (after its head is replaced) and on the loss."""

    what = "saving tensors with smdebug"

    def __init__(self, settings: HookSettings):
        self.settings = settings
        self.hook = None

    @fail_safe
    def on_train_begin(self, job):
        self.hook = self._create_hook()  # smdebug missing or refusing the model: train without tensors
        self._guard(self.hook)
        self.hook.register_module(job.model)
        self.hook.register_loss(job.criterion)
        log.info("saving tensors (%s) to %s", ", ".join(self._collections()), self.hook.out_dir)

    def on_epoch_begin(self, epoch):
        self._mode("TRAIN")

    def on_evaluate_begin(self, split):
        self._mode("EVAL")

    def on_evaluate_end(self, split, metrics):
        self._mode("TRAIN")

    @fail_safe
    def on_train_end(self, history):
        if self.hook is not None:
            self.hook.close()

    # -----------------------------------------------------------------------------------------

    def _create_hook(self):
        from smdebug import pytorch as smd  # optional, heavy: imported only when tensors are asked for

        out_dir = _fresh(self.settings.out_dir)
        if self.settings.config is not None:
            config = dict(self.settings.config, LocalPath=str(out_dir))
            with tempfile.NamedTemporaryFile("w", suffix=".json") as f:  # smdebug reads a file
                json.dump(config, f)
                f.flush()
                return smd.Hook.create_from_json_file(f.name)
        return smd.Hook(out_dir=str(out_dir), save_config=smd.SaveConfig(save_interval=self.settings.save_interval),
                        include_collections=list(self.settings.collections))

    def _collections(self) -> list[str]:
        if self.settings.config is None:
            return list(self.settings.collections)
        return [c.get("CollectionName", "?") for c in self.settings.config.get("CollectionConfigurations", [])] or [
            "smdebug's defaults"]

    def _guard(self, hook) -> None:
        """Route the functions smdebug registers on modules and tensors through `_call_hook`: their
        first exception turns every hook into a no-op, instead of failing the step."""
        for name in ("forward_pre_hook", "forward_hook", "fhook"):
            setattr(hook, name, functools.partial(self._call_hook, getattr(hook, name)))
        backward = hook.backward_hook
        hook.backward_hook = lambda tname: functools.partial(self._call_hook, backward(tname))

    @fail_safe
    def _call_hook(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    @fail_safe
    def _mode(self, name: str) -> None:
        if self.hook is not None:
            from smdebug import modes

            self.hook.set_mode(getattr(modes, name))


def _fresh(path: Path) -> Path:
    """`path`, or a new folder beside it when it holds files already (a resumed job): smdebug
    refuses an existing out_dir with a misleading error."""
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()  # smdebug creates it again
    if path.exists():
        fresh = path.with_name(f"{path.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s is not empty (an earlier run of this job?): tensors of this run go to %s", path, fresh)
        return fresh
    return path
