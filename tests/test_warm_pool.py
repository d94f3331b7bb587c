"""A job on a warm pool keeps its feature cache in the directory SageMaker keeps for the next job on
the pool (SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY), and the next job reuses it; without a warm
pool the cache stays in the checkpoint folder. Each job on the pool downloads its channels again:
the cache is keyed by their files' names and sizes, not their times."""
from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

from test_features import LITE
from test_train import job_env

from imgclf.train import features
from imgclf.train.contract import WARM_POOL_CACHE_ENV, TrainingEnvironment
from imgclf.train.job import run


def test_cache_dir_is_the_warm_pools_when_sagemaker_gives_one(tmp_path):
    base = {"SAGEMAKER_BASE_DIR": str(tmp_path)}
    assert TrainingEnvironment.from_env(base).cache_dir == tmp_path / "checkpoints"
    env = TrainingEnvironment.from_env({**base, WARM_POOL_CACHE_ENV: "/opt/ml/sagemaker/warmpoolcache"})
    assert env.cache_dir == Path("/opt/ml/sagemaker/warmpoolcache")


def test_the_next_job_on_the_pool_reuses_the_feature_cache(tmp_path, image_folders, caplog):
    pool = tmp_path / "warm-pool-cache"
    first = replace(job_env(tmp_path / "first", image_folders, **{**LITE, "epochs": "1"}, features="true"),
                    warm_pool_dir=pool)
    with caplog.at_level(logging.INFO, logger=features.log.name):
        assert run(first) == 0
    assert "features: computing" in caplog.text
    assert (pool / "features" / features.MANIFEST).is_file()
    assert not (first.checkpoint_dir / "features").exists()  # nothing for checkpoint_s3_uri to upload

    caplog.clear()
    # a new job: its own folders, its channels downloaded again (the same files, new times), the pool's cache
    downloaded = shutil.copytree(image_folders, tmp_path / "downloaded", copy_function=shutil.copy)
    second = replace(job_env(tmp_path / "second", downloaded, **{**LITE, "epochs": "1"}, features="true"),
                     warm_pool_dir=pool)
    with caplog.at_level(logging.INFO, logger=features.log.name):
        assert run(second) == 0
    assert "features: reusing" in caplog.text and "features: computing" not in caplog.text
