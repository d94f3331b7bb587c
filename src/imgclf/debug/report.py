"""The profiler report: one self-contained HTML file (inline CSS and SVG, no script, no network),
in the layout of SageMaker Debugger's ProfilerReport: training job summary, rules summary, step
durations and outliers, system usage, loss and accuracy, and one section per host and process
of a distributed job.

The job writes it to its output data dir (so it lands in the job's S3 output). To render it again
from a finished job's output, a folder or the output.tar.gz downloaded from S3:

    imgclf-report OUTPUT_DIR_OR_TAR [-o report.html]
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import io
import json
import statistics
import sys
import tarfile
from pathlib import Path

from .charts import line_chart
from .jobdata import STEP_PHASES, JobData
from .profiler_rules import percentile

REPORT_FILE = "profiler-report.html"
PROFILE_GLOB = "profile-*.json"
MAX_OUTLIERS_SHOWN = 20

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#222;
line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}#rules{table-layout:fixed;width:100%}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fired td{background:#fff3f0}.muted{color:#777}.chart{display:block;margin:8px 0}
code{font-size:12px;background:#f4f4f4;padding:1px 3px}
"""


def write(profiles: list[JobData], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(profiles), encoding="utf-8")
    return path


def render(profiles: list[JobData]) -> str:
    if not profiles:
        raise ValueError("no profiles to report on")
    profiles = sorted(profiles, key=lambda p: (p.rank, p.host))
    main = profiles[0]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Profiler report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>Profiler report</h1>",
             f"<p class='muted'>Training job on {len(profiles)} process(es): "
             f"{html.escape(', '.join(p.label for p in profiles))}. Generated {_time(dt.datetime.now().timestamp())}."
             "</p>",
             _job_summary(main), _rules_summary(profiles), _training_curves(main)]
    if len(profiles) == 1:
        parts.append(_host_sections(main, level=2))
    else:
        for p in profiles:
            parts.append(f"<section class='host'><h2>Host {html.escape(p.label)}</h2>{_host_sections(p, level=3)}"
                         "</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# sections


def _job_summary(p: JobData) -> str:
    end = p.end or p.loop_end or p.start
    total = max(end - p.start, 1e-9)
    loop_start = p.loop_start or p.start
    loop_end = p.loop_end or loop_start
    init, loop, final = loop_start - p.start, loop_end - loop_start, end - loop_end
    rows = [("start_time", _time(p.start), ""), ("end_time", _time(end), ""),
            ("job_duration", f"{total:.1f} s", "100 %"),
            ("training_loop_start", _time(loop_start), ""), ("training_loop_end", _time(loop_end), ""),
            ("initialization", f"{init:.1f} s", f"{100 * init / total:.1f} %"),
            ("training_loop", f"{loop:.1f} s", f"{100 * loop / total:.1f} %"),
            ("finalization", f"{final:.1f} s", f"{100 * final / total:.1f} %")]
    body = "".join(f"<tr><th>{k}</th><td class='num'>{v}</td><td class='num'>{pc}</td></tr>" for k, v, pc in rows)
    return ("<h2>Training job summary</h2><p>Initialisation runs from the process start to the first training "
            "step, the training loop to the end of the last step, finalisation to the end of the job (test pass, "
            f"model artifact).</p><table id='job-summary'>{body}</table>")


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
    return sorted(merged.values(), key=lambda r: (-r["triggers"], r["name"]))


def _rules_summary(profiles: list[JobData]) -> str:
    rules = _merged_rules(profiles)
    if not rules:
        return "<h2>Rules summary</h2><p>No rules ran (rules and profiler were turned off).</p>"
    fired = [r for r in rules if r["triggers"]]
    lead = (f"<p id='rules-lead'><b>{html.escape(fired[0]['name'])}</b> was the most frequently triggered rule "
            f"({fired[0]['triggers']} times). {len(fired)} of {len(rules)} rules triggered.</p>" if fired else
            f"<p id='rules-lead'>None of the {len(rules)} rules triggered.</p>")
    rows = []
    for r in rules:
        params = ", ".join(f"{k}={v}" for k, v in r["parameters"].items())
        wheres = [e["where"] for e in r["events"]]
        events = (f"<div class='muted'>at {html.escape(', '.join(wheres[:6]))}"
                  f"{', ...' if len(wheres) > 6 else ''}</div>" if wheres else "")
        rows.append(
            f"<tr class='{'fired' if r['triggers'] else 'quiet'}'><td><b>{html.escape(r['name'])}</b><br>"
            f"<span class='muted'>{r['kind']}</span></td><td class='num'>{r['triggers']}</td>"
            f"<td class='num'>{r['datapoints']}</td><td>{html.escape(r['description'])}<br>"
            f"<code>{html.escape(params)}</code></td><td>{html.escape(r['status'])}{events}</td>"
            f"<td>{html.escape(r['advice']) if r['triggers'] else ''}</td></tr>")
    return ("<h2>Rules summary</h2>" + lead +
            "<table id='rules'><colgroup><col style='width:15%'><col style='width:7%'><col style='width:7%'>"
            "<col style='width:31%'><col style='width:24%'><col style='width:16%'></colgroup><tr><th>Rule</th><th>Triggered</th><th>Data points</th><th>Description and parameters"
            "</th><th>Verdict</th><th>Advice</th></tr>" + "".join(rows) + "</table>")


def _training_curves(p: JobData) -> str:
    out = ["<h2>Loss and accuracy</h2>"]
    steps = p.steps.step[:len(p.losses)]
    out.append(line_chart([("training loss", steps, p.losses)], title="Training loss per step", x_label="step",
                          y_label="loss"))
    epochs = [m for m in p.epochs if "epoch" in m]
    e = [m["epoch"] for m in epochs]
    out.append(line_chart([(k, e, [m.get(k) for m in epochs]) for k in ("train_loss", "valid_loss")],
                          title="Loss per epoch", x_label="epoch", y_label="loss", markers=True))
    out.append(line_chart([(k, e, [m.get(k) for m in epochs]) for k in ("train_acc", "valid_acc")],
                          title="Accuracy per epoch", x_label="epoch", y_label="accuracy", y_min=0, y_max=1,
                          markers=True))
    if epochs:
        keys = [k for k in epochs[0] if k != "epoch"]
        rows = "".join("<tr><td class='num'>" + "</td><td class='num'>".join(
            [str(m["epoch"])] + [_num(m.get(k)) for k in keys]) + "</td></tr>" for m in epochs)
        out.append(f"<table id='epochs'><tr><th>epoch</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{rows}</table>")
    if p.test:
        out.append("<p id='test'>Test: " + ", ".join(f"{k} {_num(v)}" for k, v in p.test.items()) + "</p>")
    return "".join(out)


def _host_sections(p: JobData, level: int) -> str:
    return _step_section(p, level) + _system_section(p, level) + _traces(p)


def _step_section(p: JobData, level: int) -> str:
    s = p.steps
    h = f"h{level}"
    if not len(s):
        return f"<{h}>Step durations</{h}><p>No training steps were recorded.</p>"
    totals = s.totals()
    grand = sum(totals) or 1e-9
    rows = []
    for name, values in [("step", totals)] + [(ph, getattr(s, ph)) for ph in STEP_PHASES]:
        rows.append(f"<tr><th>{name}</th>" + "".join(f"<td class='num'>{v}</td>" for v in (
            len(values), f"{statistics.fmean(values):.4f}", f"{percentile(values, 50):.4f}",
            f"{percentile(values, 95):.4f}", f"{max(values):.4f}", f"{100 * sum(values) / grand:.1f} %")) + "</tr>")
    k = _stddev_factor(p)
    mean, sd = statistics.fmean(totals), statistics.pstdev(totals)
    limit = mean + k * sd
    outliers = [i for i, t in enumerate(totals) if t > limit]
    out = [f"<{h}>Step durations</{h}>",
           "<p>Seconds per training step and per phase: waiting for the batch (data), forward, backward and the "
           "optimizer step.</p>",
           "<table class='steps'><tr><th></th><th>count</th><th>mean</th><th>p50</th><th>p95</th><th>max</th>"
           "<th>share</th></tr>" + "".join(rows) + "</table>",
           line_chart([("step", s.step, totals), ("data", s.step, s.data)], title="Step duration",
                      x_label="step", y_label="seconds"),
           f"<p class='outliers'>{len(outliers)} outlier step(s) over {limit:.3f} s (mean {mean:.3f} s + {k} standard "
           f"deviations of {sd:.3f} s)" + (":" if outliers else ".") + "</p>"]
    if outliers:
        shown = sorted(outliers, key=lambda i: -totals[i])[:MAX_OUTLIERS_SHOWN]
        body = "".join("<tr>" + "".join(f"<td class='num'>{v}</td>" for v in (
            s.step[i], s.epoch[i], f"{totals[i]:.3f}", *(f"{getattr(s, ph)[i]:.3f}" for ph in STEP_PHASES)))
            + "</tr>" for i in shown)
        out.append("<table class='outliers'><tr><th>step</th><th>epoch</th><th>seconds</th>"
                   + "".join(f"<th>{ph}</th>" for ph in STEP_PHASES) + f"</tr>{body}</table>")
    return "".join(out)


def _system_section(p: JobData, level: int) -> str:
    s = p.system
    h = f"h{level}"
    if not len(s):
        return f"<{h}>System usage</{h}><p>No system metrics were sampled (profiler off, or the job was shorter " \
               f"than one interval of {p.interval_ms} ms).</p>"
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
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{unit}</td>" + "".join(
        f"<td class='num'>{v:.1f}</td>" for v in (statistics.fmean(vals), percentile(vals, 50), percentile(vals, 95),
                                                  max(vals))) + "</tr>" for name, unit, vals in metrics if vals)
    out = [f"<{h}>System usage</{h}>",
           f"<p>{len(s)} samples every {p.interval_ms} ms on {p.cpus} CPU core(s)"
           f"{f' and {gpus} GPU(s)' if gpus else ', no GPU'}.</p>",
           "<table class='system'><tr><th>metric</th><th>unit</th><th>mean</th><th>p50</th><th>p95</th><th>max</th>"
           f"</tr>{rows}</table>",
           line_chart([("CPU all cores", t, s.cpu), ("memory", t, s.memory), ("I/O wait", t, s.iowait)]
                      + [(f"core {c}", t, [r[c] if len(r) > c else None for r in s.cpu_cores])
                         for c in range(min(cores, 4))],
                      title="CPU and memory utilisation", x_label="seconds since start", y_label="%", y_min=0,
                      y_max=100)]
    if gpus:
        out.append(line_chart([(f"GPU {g} utilisation", t, [r[g] if len(r) > g else None for r in s.gpu])
                               for g in range(gpus)]
                              + [(f"GPU {g} memory", t, [r[g] if len(r) > g else None for r in s.gpu_memory])
                                 for g in range(gpus)],
                              title="GPU utilisation and memory", x_label="seconds since start", y_label="%",
                              y_min=0, y_max=100))
    out.append(line_chart([("disk read", t, s.disk_read_mb_s), ("disk write", t, s.disk_write_mb_s),
                           ("network received", t, s.net_recv_mb_s), ("network sent", t, s.net_sent_mb_s)],
                          title="Disk and network I/O", x_label="seconds since start", y_label="MB/s", y_min=0))
    return "".join(out)


def _traces(p: JobData) -> str:
    if not p.traces:
        return ""
    items = "".join(f"<li><code>{html.escape(t)}</code></li>" for t in p.traces)
    return ("<p>torch.profiler traces (beside this report; open them in Perfetto or chrome://tracing):</p>"
            f"<ul>{items}</ul>")


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
    return html.escape(str(v))


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
    p = argparse.ArgumentParser(prog="imgclf-report", description="Render the profiler report of a finished "
                                "training job from its output (folder, or output.tar.gz from S3).")
    p.add_argument("output", type=Path, help="the job's output data folder (or any folder above it), or output.tar.gz")
    p.add_argument("-o", "--out", type=Path, help=f"the HTML file (default: {REPORT_FILE} in the folder, or beside "
                                                   "the archive)")
    args = p.parse_args(argv)
    try:
        profiles = load(args.output)
    except (OSError, ValueError, tarfile.TarError) as e:
        sys.exit(f"error: cannot read {args.output}: {e}")
    if not profiles:
        sys.exit(f"error: no {PROFILE_GLOB} under {args.output}: was the job run with profiler or rules on?")
    out = args.out or (args.output / REPORT_FILE if args.output.is_dir() else args.output.with_name(REPORT_FILE))
    print(write(profiles, out))


if __name__ == "__main__":
    cli()
