"""The profiler report: rendered by the job and by `imgclf-report` from a finished job's output
(folder or output.tar.gz), self-contained, one section per host, and as a browser shows it."""
import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import load_artifact, make_image_folder, require
from PIL import Image
from test_train import job_env

from imgclf.artifact import mistakes
from imgclf.artifact.baseline import read_evaluation
from imgclf.debug import report
from imgclf.debug.charts import PALETTE
from imgclf.debug.jobdata import JobData
from imgclf.train.job import run
from imgclf.train.presets import ClassificationPresetEval

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def job_output(tmp_path_factory):
    """The output data dir of a short real job (2 epochs)."""
    tmp = tmp_path_factory.mktemp("reported")
    for split, n, seed in (("train", 12, 0), ("valid", 4, 1), ("test", 4, 2)):
        make_image_folder(tmp / "data" / split, per_class=n, seed=seed)
    env = job_env(tmp, tmp / "data", **{"profiler-interval-ms": "100"})
    assert run(env) == 0
    return env.output_data_dir


def report_cli(*args):
    return subprocess.run([sys.executable, "-m", "imgclf.debug.report", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_the_job_writes_a_self_contained_report(job_output):
    html = (job_output / report.REPORT_FILE).read_text()
    for section in ("Training job summary", "Rules summary", "Loss and accuracy", "Evaluation", "Step durations",
                    "System usage"):
        assert f">{section}</h2>" in html
    assert "<script" not in html and "<link" not in html  # nothing to fetch: pictures are data: URIs
    assert all(src.startswith("data:") for src in re.findall(r"""\ssrc=['"]?([^'" >]*)""", html))
    assert html.count("<svg") >= 6


def test_the_command_renders_it_again_from_a_folder_or_the_s3_archive(job_output, tmp_path):
    copy = tmp_path / "downloaded"
    shutil.copytree(job_output, copy)
    (copy / report.REPORT_FILE).unlink()
    done = report_cli(copy.parent)
    assert done.returncode == 0, done.stderr
    assert (copy.parent / report.REPORT_FILE).read_text().count("<svg") >= 6

    archive = tmp_path / "output.tar.gz"  # what SageMaker uploads: output/data's files at the top
    with tarfile.open(archive, "w:gz") as tar:
        for f in copy.rglob("*"):
            tar.add(f, arcname=str(f.relative_to(copy)), recursive=False)
    done = report_cli(archive, "-o", tmp_path / "from-s3.html")
    assert done.returncode == 0, done.stderr
    assert "Rules summary" in (tmp_path / "from-s3.html").read_text()


def test_the_command_says_when_there_is_nothing_to_report(tmp_path):
    done = report_cli(tmp_path)
    assert done.returncode == 2 and "no profile-*.json under" in done.stderr


def test_a_distributed_job_gets_one_section_per_host(job_output):
    profile = json.loads(next((job_output / "debug").glob("profile-*.json")).read_text())
    hosts = [JobData.from_dict(dict(json.loads(json.dumps(profile)), host=h, rank=r, world_size=2))
             for r, h in enumerate(("algo-1", "algo-2"))]
    hosts[1].rules[0] = dict(hosts[1].rules[0], triggers=hosts[1].rules[0]["triggers"] + 7)
    html = report.render(hosts)
    assert "<h2>Host algo-1 rank 0</h2>" in html and "<h2>Host algo-2 rank 1</h2>" in html
    assert "2 process(es): algo-1 rank 0, algo-2 rank 1" in html
    name = hosts[0].rules[0]["name"]
    summed = 2 * profile["rules"][0]["triggers"] + 7
    assert f"<b>{name}</b><br><span class='muted'>{hosts[0].rules[0]['kind']}</span></td><td class='num'>{summed}<" in html


def test_thumbnails_of_the_mistakes_under_each_confused_pair(job_output):
    evaluation = read_evaluation(job_output)
    confused = evaluation["most_confused"]
    assert confused, "the short job misclassified nothing: no pairs to show"
    pairs = mistakes.read(job_output)
    assert [(p["true"], p["predicted"]) for p in pairs] == [(p["true"], p["predicted"]) for p in confused]
    stored = [m for p in pairs for m in p["images"]]
    assert all(len(p["images"]) <= mistakes.PER_PAIR for p in pairs)
    assert sum(len(base64.b64decode(m["jpeg"])) for m in stored) <= mistakes.MAX_JPEG_BYTES
    assert (job_output / mistakes.MISTAKES_FILE).stat().st_size < 100_000
    for p in pairs:  # the most confident mistakes first
        assert [m["confidence"] for m in p["images"]] == sorted((m["confidence"] for m in p["images"]), reverse=True)

    test_images = {f"{f.parent.name}/{f.name}": f for f in (job_output.parents[1] / "data" / "test").rglob("*.jpg")}
    means = {name: mean_colour(Image.open(f)) for name, f in test_images.items()}
    answers = model_answers(job_output, test_images)
    confidence = {m["source"]: m["confidence"] for m in stored}
    html = (job_output / report.REPORT_FILE).read_text()
    shown = 0
    for pair in confused:
        t, p, n = pair["true"], pair["predicted"], pair["count"]
        row = re.search(f"<tr><td>{t}</td><td>{p}</td><td class='num'>{n}</td></tr>"
                        "<tr class='mistakes'><td colspan='3'>(.*?)</td></tr>", html)
        assert row, f"no thumbnails under {t} -> {p}"
        thumbs = re.findall(f"<img src='data:image/jpeg;base64,([^']+)' alt='{t} predicted as {p}' "
                            f"title='([^':]+): \\d+% {p}'>", row.group(1))
        assert len(thumbs) == min(n, mistakes.PER_PAIR)
        for data, source in thumbs:
            thumb = Image.open(io.BytesIO(base64.b64decode(data)))
            assert thumb.format == "JPEG" and max(thumb.size) <= mistakes.THUMBNAIL_PX
            assert source.split("/")[0] == t  # a test image of the true class that the model took for p ...
            probs = answers[source]
            assert probs[p] == pytest.approx(confidence[source], abs=0.03) and probs[p] >= max(probs.values()) - 0.03
            mean = mean_colour(thumb)  # ... and the picture is that image's
            assert min(means, key=lambda name: sum(abs(a - b) for a, b in zip(means[name], mean))) == source
            assert max(abs(a - b) for a, b in zip(means[source], mean)) < 6
            shown += 1
    assert shown == sum(min(p["count"], mistakes.PER_PAIR) for p in confused)


def model_answers(job_output, images: dict) -> dict[str, dict[str, float]]:
    """The job's model's class probabilities for each image, in the job's precision."""
    net, card = load_artifact(job_output.parents[1] / "model")
    transform = ClassificationPresetEval.from_settings(card.eval)
    amp = json.loads((job_output / "args.json").read_text())["amp"]
    answers = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        for name, f in images.items():
            probs = net(transform(Image.open(f).convert("RGB"))[None]).float().softmax(1)[0]
            answers[name] = dict(zip(card.classes, probs.tolist()))
    return answers


def mean_colour(img: Image.Image) -> tuple[float, ...]:
    rgb = img.convert("RGB")
    return tuple(sum(v * c for c, v in enumerate(rgb.getchannel(band).histogram())) / (rgb.width * rgb.height)
                 for band in range(3))


def test_a_browser_shows_the_summary_rules_and_charts(job_output, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require(chromium is not None, "no chromium (apt-get install chromium)")
    page = (job_output / report.REPORT_FILE).as_uri()

    def browse(*args):
        profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
        profile.mkdir()
        return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page],
                              capture_output=True, text=True, timeout=120)

    dom = browse("--dump-dom").stdout
    assert "Training job summary" in dom and "initialization" in dom and "training_loop" in dom
    assert "Dataloader</b>" in dom and "was the most frequently triggered rule" in dom
    assert dom.count("<tr class=\"fired\">") + dom.count("<tr class=\"quiet\">") == 14
    assert dom.count("<svg") >= 6 and "Training loss per step" in dom

    shot = tmp_path / "report.png"
    # tall enough for the charts below every rule row: in a long test session the job's start
    # (its process's) is long ago, and MaxInitializationTime adds a row
    done = browse("--window-size=1200,4800", f"--screenshot={shot}")
    assert shot.is_file(), done.stderr
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 4800)
    colors = image.getcolors(maxcolors=1 << 20)
    first_series = tuple(int(PALETTE[0][i:i + 2], 16) for i in (1, 3, 5))
    drawn = sum(n for n, c in colors if max(abs(a - b) for a, b in zip(c, first_series)) < 40)
    assert drawn > 200, "no chart lines painted"  # the SVG plots rendered, not just text
    assert len(colors) > 50
