from pathlib import Path
from unittest import mock

import pytest

from imgclf.serve import environment
from imgclf.serve.environment import ServingEnvironment


def test_defaults_follow_the_sagemaker_contract():
    with mock.patch.object(environment, "cpu_count", return_value=4):
        env = ServingEnvironment.from_env({})
    assert env.model_dir == Path("/opt/ml/model")
    assert env.models_dir == Path("/opt/ml/models")
    assert env.port == 8080 and not env.multi_model
    # a worker per CPU, one thread each; a request alone gets every one of the 4
    assert (env.workers, env.torch_threads, env.lone_threads, env.max_batch_delay_ms) == (4, 1, 4, 0)
    assert env.max_payload_bytes == 6 * 1024 * 1024
    assert env.precision == "auto" and env.top_k == 5
    # auto serves int8 at >= 99 % top-1 agreement and <= 0.5 point accuracy drop
    assert (env.int8_min_agreement, env.int8_max_accuracy_drop) == (0.99, 0.005)


@pytest.mark.parametrize("cpus, gpus, workers, threads, lone", [(1, 0, 1, 1, 1), (2, 0, 2, 1, 2), (16, 0, 16, 1, 4),
                                                                 (2, 1, 1, 2, 2), (6, 1, 2, 3, 4), (16, 4, 4, 4, 4)])
def test_default_thread_layout_fits_the_cpus(cpus, gpus, workers, threads, lone):
    with mock.patch.object(environment, "cpu_count", return_value=cpus), \
            mock.patch.object(environment, "gpu_count", return_value=gpus):
        env = ServingEnvironment.from_env({})
    assert (env.workers, env.torch_threads, env.lone_threads) == (workers, threads, lone)
    assert env.workers * env.torch_threads <= cpus and env.max_batch_delay_ms == int(workers == 1)


def test_a_multi_model_endpoint_keeps_one_worker_per_4_cpus():
    with mock.patch.object(environment, "cpu_count", return_value=8), \
            mock.patch.object(environment, "gpu_count", return_value=0):
        env = ServingEnvironment.from_env({"SAGEMAKER_MULTI_MODEL": "true"})
    assert (env.workers, env.torch_threads, env.lone_threads) == (2, 4, 4)


def test_gpus_are_counted_by_their_device_files(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    assert environment.gpu_count(tmp_path) == 2 and environment.gpu_count(tmp_path / "none") == 0


def test_sagemaker_and_imgclf_variables_override():
    with mock.patch.object(environment, "cpu_count", return_value=8):
        env = ServingEnvironment.from_env({
            "SAGEMAKER_BASE_DIR": "/srv/ml",
            "SAGEMAKER_BIND_TO_PORT": "9090",
            "SAGEMAKER_MULTI_MODEL": "true",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
            "IMGCLF_BATCH_SIZE": "16",
            "IMGCLF_MAX_BATCH_DELAY_MS": "0",
            "IMGCLF_TOP_K": "3",
            "IMGCLF_PRECISION": "int8",
            "IMGCLF_INT8_MIN_AGREEMENT": "0.95",
            "IMGCLF_INT8_MAX_ACCURACY_DROP": "0.02",
        })
    assert env.model_dir == Path("/srv/ml/model") and env.models_dir == Path("/srv/ml/models")
    assert env.port == 9090 and env.multi_model
    assert (env.workers, env.torch_threads, env.lone_threads) == (2, 4, 4)
    assert env.response_timeout_s == 120 and env.max_payload_bytes == 20 * 1024 * 1024  # seconds, MiB
    assert (env.batch_size, env.max_batch_delay_ms, env.top_k, env.precision) == (16, 0, 3, "int8")
    assert (env.int8_min_agreement, env.int8_max_accuracy_drop) == (0.95, 0.02)


def test_sm_model_dir_wins_outside_a_container():
    env = ServingEnvironment.from_env({"SM_MODEL_DIR": "/tmp/m", "SAGEMAKER_BASE_DIR": "/srv/ml"})
    assert env.model_dir == Path("/tmp/m")


@pytest.mark.parametrize("var, value, words", [
    ("SAGEMAKER_MODEL_SERVER_WORKERS", "two", "not an integer"),
    ("IMGCLF_BATCH_SIZE", "0", "below 1"),
    ("IMGCLF_PRECISION", "fp16", "auto, fp32, bf16, int8"),
    ("IMGCLF_INT8_MIN_AGREEMENT", "99", "above 1"),
    ("IMGCLF_INT8_MAX_ACCURACY_DROP", "half", "not a number"),
])
def test_bad_values_name_the_variable(var, value, words):
    with pytest.raises(ValueError, match=var) as e:
        ServingEnvironment.from_env({var: value})
    assert words in str(e.value)


MiB = 1024 * 1024


@pytest.mark.parametrize("variables, profile, payload, timeout", [
    ({}, "real-time", 6 * MiB, 60),
    ({"IMGCLF_SERVING_PROFILE": "serverless"}, "serverless", 4 * MiB, 60),
    ({"IMGCLF_SERVING_PROFILE": "async"}, "async", 1024 * MiB, 3600),
    # what SageMaker sets in a batch transform's container: MaxPayloadInMB honoured
    ({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"}, "batch", 20 * MiB, 3600),
    ({"SAGEMAKER_BATCH": "true"}, "batch", 6 * MiB, 3600),
    ({"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}, "batch", 1024 * MiB, 3600),  # 0: no limit
    ({"IMGCLF_SERVING_PROFILE": "async", "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "900"}, "async", 1024 * MiB, 900),
])
def test_profiles_set_payload_limit_and_timeout_together(variables, profile, payload, timeout):
    env = ServingEnvironment.from_env(variables, memory_bytes=None)
    assert (env.profile, env.max_payload_bytes, env.response_timeout_s) == (profile, payload, timeout)
    assert env.jvm_heap_bytes == 512 * MiB  # large bodies go to disk, never onto the heap (spool.py)


@pytest.mark.parametrize("memory_gb, heap_mib", [(1, 256), (2, 512), (6, 512), (0.25, 128)])
def test_jvm_heap_fits_the_container_memory(memory_gb, heap_mib):
    memory = int(memory_gb * 1024 * MiB)
    env = ServingEnvironment.from_env({"IMGCLF_SERVING_PROFILE": "serverless"}, memory_bytes=memory)
    assert env.jvm_heap_bytes == heap_mib * MiB


def test_serverless_runs_one_worker_on_every_cpu():
    with mock.patch.object(environment, "cpu_count", return_value=8):
        env = ServingEnvironment.from_env({"IMGCLF_SERVING_PROFILE": "serverless"})
    assert (env.workers, env.torch_threads) == (1, 8)


def test_memory_limit_read_from_cgroup_v2_and_v1(tmp_path):
    (tmp_path / "memory.max").write_text("2147483648\n")
    assert environment.memory_limit_bytes(tmp_path) == 2 * 1024 * MiB
    (tmp_path / "memory.max").write_text("max\n")
    assert environment.memory_limit_bytes(tmp_path) is None
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1073741824")
    assert environment.memory_limit_bytes(tmp_path) == 1024 * MiB
    assert environment.memory_limit_bytes(tmp_path / "missing") is None


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="IMGCLF_SERVING_PROFILE='fast'; choose one of real-time, serverless"):
        ServingEnvironment.from_env({"IMGCLF_SERVING_PROFILE": "fast"})


def test_defaults_are_stated_once_and_shown_in_the_help():
    from imgclf.serve.server import get_args_parser

    help_text = " ".join(get_args_parser().format_help().split())
    for name in ("batch_size", "top_k", "port", "precision"):
        setting = environment.SETTINGS[name]
        assert f"${setting.var}, default {setting.default})" in help_text
        assert getattr(ServingEnvironment, name) == setting.default == getattr(ServingEnvironment.from_env({}), name)


def test_the_profile_table_in_docs_serving_matches_the_code():
    import re

    readme = (Path(__file__).parents[1] / "docs" / "serving.md").read_text()
    rows = dict(re.findall(r"^\| (real-time|serverless|async|batch) \| .*\| (\d+) s \|$", readme, re.M))
    assert rows == {name: str(limits.response_timeout_s) for name, limits in environment.PROFILES.items()}
    sizes = dict(re.findall(r"^\| (real-time|serverless|async) \| [^|]+\| (\d+ [MG]iB) \|", readme, re.M))
    shown = {name: environment.PROFILES[name].max_payload_bytes for name in sizes}
    assert {n: int(v.split()[0]) * (1024 ** (2 if "MiB" in v else 3)) for n, v in sizes.items()} == shown
