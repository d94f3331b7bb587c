"""CI's short run of bench/serve_soak.py (the long one is run by hand, see docs/serving.md): a few
hundred requests at concurrency 8 against the real server, a tenth of them bad, no errors and
no worker crash."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from serve_support import require_mms

pytestmark = pytest.mark.mms


def test_short_soak_has_no_errors_and_no_worker_crash():
    require_mms()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_soak.py"), "--requests", "400",
                           "--concurrency", "8", "--max-seconds", "120", "--max-growth", "0.25", "--json"],
                          capture_output=True, text=True, timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["requests"] == 400 and result["errors"] == 0, result
    assert result["worker_crashes"] == 0 and result["memory_growth"] < 0.25, result
    assert proc.returncode == 0, proc.stderr[-2000:]
