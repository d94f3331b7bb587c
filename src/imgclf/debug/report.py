"""The profiler report: one self-contained HTML file (inline CSS and SVG, no script, no network),
in the layout of SageMaker Debugger's ProfilerReport: training job summary, rules summary, step
durations and outliers, system usage, loss and accuracy, and one section per host and process
of a distributed job.

The job writes it to its output data dir (so it lands in the job's S3 output). To render it again
from a finished job's output, a folder or the output.tar.gz downloaded from S3:

    imgclf-report OUTPUT_DIR_OR_TAR [-o report.html]
"""
from __future__ import annotations

import datetime as dt
import functools
import io
import json
import statistics
import tarfile
from pathlib import Path

import jinja2
from markupsafe import Markup

from ..commandline import ArgumentParser, add_verbose, fail
from ..artifact import mistakes as mistake_thumbnails
from ..artifact.baseline import read_evaluation
from . import evaluation_section
from .charts import line_chart
from .jobdata import STEP_PHASES, JobData
from .profiler_rules import percentile

REPORT_FILE = "profiler-report.html"
PROFILE_GLOB = "profile-*.json"
MAX_OUTLIERS_SHOWN = 20
TEMPLATE = "report.html.j2"  # in templates/
# the line at the top of the report of a job that did not complete (JobData.ending["kind"])
ENDINGS = {"stopped": "The job was stopped before it completed", "failed": "The job failed"}



def write(profiles: list[JobData], path: Path, evaluation: dict | None = None,
          mistakes: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(profiles, evaluation, mistakes), encoding="utf-8")
    return path


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("imgclf.debug", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template(TEMPLATE)


def render(profiles: list[JobData], evaluation: dict | None = None, mistakes: list[dict] | None = None) -> str:
    """The report; `evaluation`, the job's evaluation.json, adds its section, and `mistakes` (the
    pairs of its mistakes.json) thumbnails under its most confused pairs."""
    if not profiles:
        raise ValueError("no profiles to report on")
    profiles = sorted(profiles, key=lambda p: (p.rank, p.host))
    main = profiles[0]
    rules = _merged_rules(profiles)
    return _template().render(
        ending=_ending(main), labels=[p.label for p in profiles],
        generated=_time(dt.datetime.now().timestamp()), summary=_job_summary(main), rules=rules,
        fired=[r for r in rules if r["triggers"]], curves=_training_curves(main),
        hosts=[_host(p) for p in profiles], phases=STEP_PHASES,
        evaluation=evaluation_section.section(evaluation, mistakes))


# ---------------------------------------------------------------------------------------------
# what each section shows


def _ending(p: JobData) -> dict | None:
    """How the job ended, when it did not complete: at the top of the report."""
    if not p.ending:
        return None
    title = ENDINGS.get(p.ending.get("kind"), "The job ended early")
    return {"kind": p.ending.get("kind", ""), "title": title, "reason": p.ending.get("reason", "")}


def _job_summary(p: JobData) -> list[tuple[str, str, str]]:
    end = p.end or p.loop_end or p.start
    total = max(end - p.start, 1e-9)
    loop_start = p.loop_start or p.start
    loop_end = p.loop_end or loop_start
    init, loop, final = loop_start - p.start, loop_end - loop_start, end - loop_end
    return [("start_time", _time(p.start), ""), ("end_time", _time(end), ""),
            ("job_duration", f"{total:.1f} s", "100 %"),
            ("training_loop_start", _time(loop_start), ""), ("training_loop_end", _time(loop_end), ""),
            ("initialization", f"{init:.1f} s", f"{100 * init / total:.1f} %"),
            ("training_loop", f"{loop:.1f} s", f"{100 * loop / total:.1f} %"),
            ("finalization", f"{final:.1f} s", f"{100 * final / total:.1f} %")]


def _merged_rules(profiles: list[JobData]) -> list[dict]:
    """One row per rule: counts summed over the processes, the status of the one that fired most."""
    merged: dict[str, dict] = {}
    for p in profiles:
        for r in p.rules:
            m = merged.setdefault(r["name"], dict(r, triggers=0, evaluations=0, datapoints=0, events=[], _top=-1))
            for key in ("triggers", "evaluations", "datapoints"):
                m[key] += r[key]
            m["events"] += [dict(e, where=f"{p.label}: {e['where']}" if len(profiles) > 1 else e["where"])
                            for e in r["events"]]
            if r["triggers"] > m["_top"]:
                m["status"], m["_top"] = r["status"], r["triggers"]
    for m in merged.values():
        m["params"] = ", ".join(f"{k}={v}" for k, v in m["parameters"].items())
        m["wheres"] = [e["where"] for e in m["events"]]
    return sorted(merged.values(), key=lambda r: (-r["triggers"], r["name"]))


def _training_curves(p: JobData) -> dict:
    steps = p.steps.step[:len(p.losses)]
    epochs = [m for m in p.epochs if "epoch" in m]
    e = [m["epoch"] for m in epochs]
    charts = [line_chart([("training loss", steps, p.losses)], title="Training loss per step", x_label="step",
                         y_label="loss"),
              line_chart([(k, e, [m.get(k) for m in epochs]) for k in ("train_loss", "valid_loss")],
                         title="Loss per epoch", x_label="epoch", y_label="loss", markers=True),
              line_chart([(k, e, [m.get(k) for m in epochs]) for k in ("train_acc", "valid_acc")],
                         title="Accuracy per epoch", x_label="epoch", y_label="accuracy", y_min=0, y_max=1,
                         markers=True)]
    keys = [k for k in epochs[0] if k != "epoch"] if epochs else []
    return {"charts": [Markup(c) for c in charts], "columns": keys,
            "epochs": [[m["epoch"]] + [_num(m.get(k)) for k in keys] for m in epochs],
            "test": ", ".join(f"{k} {_num(v)}" for k, v in p.test.items())}


def _host(p: JobData) -> dict:
    return {"label": p.label, "interval_ms": p.interval_ms, "cpus": p.cpus, "traces": p.traces,
            "steps": _steps(p), "system": _system(p)}


def _stats(values: list[float], digits: int) -> list[str]:
    return [f"{v:.{digits}f}" for v in (statistics.fmean(values), percentile(values, 50), percentile(values, 95),
                                        max(values))]


def _steps(p: JobData) -> dict | None:
    s = p.steps
    if not len(s):
        return None
    totals = s.totals()
    grand = sum(totals) or 1e-9
    rows = [(name, [len(values), *_stats(values, 4), f"{100 * sum(values) / grand:.1f} %"])
            for name, values in [("step", totals)] + [(ph, getattr(s, ph)) for ph in STEP_PHASES]]
    k = _stddev_factor(p)
    mean, sd = statistics.fmean(totals), statistics.pstdev(totals)
    limit = mean + k * sd
    outliers = sorted((i for i, t in enumerate(totals) if t > limit), key=lambda i: -totals[i])
    chart = line_chart([("step", s.step, totals), ("data", s.step, s.data)], title="Step duration",
                       x_label="step", y_label="seconds")
    return {"rows": rows, "chart": Markup(chart), "k": k, "mean": f"{mean:.3f}", "sd": f"{sd:.3f}",
            "limit": f"{limit:.3f}", "outliers": [
                [s.step[i], s.epoch[i], f"{totals[i]:.3f}", *(f"{getattr(s, ph)[i]:.3f}" for ph in STEP_PHASES)]
                for i in outliers[:MAX_OUTLIERS_SHOWN]]}


def _system(p: JobData) -> dict | None:
    s = p.system
    if not len(s):
        return None
    t = [x - p.start for x in s.time]
    metrics = [("CPU (all cores)", "%", s.cpu), ("memory", "%", s.memory), ("I/O wait", "%", s.iowait),
               ("disk read", "MB/s", s.disk_read_mb_s), ("disk write", "MB/s", s.disk_write_mb_s),
               ("network received", "MB/s", s.net_recv_mb_s), ("network sent", "MB/s", s.net_sent_mb_s)]
    gpus = max((len(r) for r in s.gpu), default=0)
    for g in range(gpus):
        metrics.append((f"GPU {g} utilisation", "%", [r[g] for r in s.gpu if len(r) > g]))
        metrics.append((f"GPU {g} memory", "%", [r[g] for r in s.gpu_memory if len(r) > g]))
    cores = max((len(r) for r in s.cpu_cores), default=0)
    for c in range(cores):
        metrics.append((f"CPU core {c}", "%", [r[c] for r in s.cpu_cores if len(r) > c]))
    charts = [line_chart([("CPU all cores", t, s.cpu), ("memory", t, s.memory), ("I/O wait", t, s.iowait)]
                         + [(f"core {c}", t, [r[c] if len(r) > c else None for r in s.cpu_cores])
                            for c in range(min(cores, 4))],
                         title="CPU and memory utilisation", x_label="seconds since start", y_label="%", y_min=0,
                         y_max=100)]
    if gpus:
        charts.append(line_chart([(f"GPU {g} utilisation", t, [r[g] if len(r) > g else None for r in s.gpu])
                                  for g in range(gpus)]
                                 + [(f"GPU {g} memory", t, [r[g] if len(r) > g else None for r in s.gpu_memory])
                                    for g in range(gpus)],
                                 title="GPU utilisation and memory", x_label="seconds since start", y_label="%",
                                 y_min=0, y_max=100))
    charts.append(line_chart([("disk read", t, s.disk_read_mb_s), ("disk write", t, s.disk_write_mb_s),
                              ("network received", t, s.net_recv_mb_s), ("network sent", t, s.net_sent_mb_s)],
                             title="Disk and network I/O", x_label="seconds since start", y_label="MB/s", y_min=0))
    return {"samples": len(s), "gpus": gpus, "charts": [Markup(c) for c in charts],
            "rows": [(name, unit, _stats(vals, 1)) for name, unit, vals in metrics if vals]}


def _stddev_factor(p: JobData) -> float:
    for r in p.rules:
        if r["name"] == "StepOutlier":
            return r["parameters"]["stddev"]
    return 3


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# rendering a finished job's output


def load(path: Path) -> list[JobData]:
    """Every process's profile under a job's output folder, or in its output.tar.gz."""
    if path.is_file() and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            return [JobData.from_dict(json.load(io.TextIOWrapper(tar.extractfile(m), encoding="utf-8")))
                    for m in tar.getmembers() if m.isfile() and Path(m.name).match(PROFILE_GLOB)]
    if path.is_dir():
        return [JobData.from_dict(json.loads(f.read_text())) for f in sorted(path.rglob(PROFILE_GLOB))]
    raise FileNotFoundError(f"{path} is neither a folder nor a .tar.gz")


def cli(argv: list[str] | None = None) -> None:
    p = ArgumentParser(prog="imgclf-report", description="Render the profiler report of a finished "
                       "training job from its output (folder, or output.tar.gz from S3).")
    p.add_argument("output", type=Path, help="the job's output data folder (or any folder above it), or output.tar.gz")
    p.add_argument("-o", "--out", type=Path, help=f"the HTML file (default: {REPORT_FILE} in the folder, or beside "
                                                   "the archive)")
    add_verbose(p)
    args = p.parse_args(argv)
    try:
        profiles = load(args.output)
    except (OSError, ValueError, tarfile.TarError) as e:
        fail("imgclf-report", f"cannot read {args.output}: {e}; give a job's output folder or its output.tar.gz",
             args.verbose)
    if not profiles:
        fail("imgclf-report", f"no {PROFILE_GLOB} under {args.output}: give the output of a job run with the "
                              "profiler or rules on", args.verbose)
    out = args.out or (args.output / REPORT_FILE if args.output.is_dir() else args.output.with_name(REPORT_FILE))
    folder = args.output if args.output.is_dir() else None
    print(write(profiles, out, folder and read_evaluation(folder), folder and mistake_thumbnails.read(folder)))


if __name__ == "__main__":
    cli()
