"""Drift in what an endpoint sees: its captured traffic against the model's baseline.

    capture.py          SageMaker data-capture files (and ground truth) read back, one observation per image
    baseline_source.py  the model's baseline.json and evaluation.json, from its folder, archive or S3
    drift.py            the checks: tests that know their sample size, and the smallest effect that counts
    analysis.py         one run: checks, then statistics.json and violations.json in Model Monitor's shapes
    report.py           report.html
    cli.py              `imgclf monitor` / `python -m imgclf.monitor`

Reads artifact/ only (numpy, PIL, scipy): the monitor runs where the model is not loaded.
"""
