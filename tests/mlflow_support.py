"""A real MLflow tracking server for tests: SQLite backend, artifacts proxied by the server into a
local folder (a client in a container writes them over HTTP), on 127.0.0.1 and a free port."""
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import free_port, require


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The server's URI; the server stops at the end of the session."""
    mlflow = Path(sys.executable).with_name("mlflow")
    require(mlflow.exists() or shutil.which("mlflow") is not None, "no mlflow (pip install mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([str(mlflow) if mlflow.exists() else "mlflow", "server",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{uri}/health", timeout=10).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (root / "server.log").read_text()
            time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not answer: {(root / 'server.log').read_text()}")
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def runs_of(uri: str, experiment: str = "imgclf"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else [])
