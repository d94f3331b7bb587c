"""The launcher's SageMaker Debugger builders: what a training job request carries with
`--sagemaker-debugger` (against moto), and their refusal in local mode."""
import boto3
import pytest
from sagemaker.estimator import Estimator
from test_launch import IMAGE, TINY, aws, local, sent  # noqa: F401 (fixtures)

from imgclf.launch import cli, datasets, debugger, training
from imgclf.names import UserError


def test_training_job_request_carries_rules_hook_and_profiler_config(aws, sent):  # noqa: F811
    boto3.client("s3").create_bucket(Bucket="out")
    hps = {**TINY, "rule-parameters": '{"Overfit": {"patience": 3}, "Overtraining": false, "StepOutlier": {"stddev": 5}}',
           "debug-save-interval": 20, "profiler-interval-ms": 1000}
    spec = training.JobSpec(IMAGE, hps, output_path="s3://out/jobs")
    kwargs = training.estimator_kwargs(spec, aws)
    kwargs.update(debugger.estimator_kwargs(aws, spec.hyperparameters))
    training.train(Estimator(**kwargs), datasets.channels("s3://data/dogs", ["train"]), wait=False)
    (request,) = sent["CreateTrainingJob"]

    rules = {r["RuleConfigurationName"]: r["RuleParameters"] for r in request["DebugRuleConfigurations"]}
    assert set(rules) == {"VanishingGradient", "Overfit", "PoorWeightInitialization", "LossNotDecreasing"}
    assert rules["Overfit"]["patience"] == "3" and rules["Overfit"]["rule_to_invoke"] == "Overfit"
    hook = request["DebugHookConfig"]
    assert hook["S3OutputPath"].startswith("s3://out/jobs")
    saved = {c["CollectionName"]: c.get("CollectionParameters", {}) for c in hook["CollectionConfigurations"]}
    assert {"losses", "weights", "gradients", "biases"} <= set(saved) and saved["weights"]["save_interval"] == "20"
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 1000
    (report,) = request["ProfilerRuleConfigurations"]
    assert report["RuleParameters"]["rule_to_invoke"] == "ProfilerReport"
    assert report["RuleParameters"]["StepOutlier_stddev"] == "5"


def test_debugger_rules_need_aws(local):  # noqa: F811
    with pytest.raises(UserError, match="local mode the job evaluates the same rules itself"):
        debugger.estimator_kwargs(local, {})


def test_bad_rule_parameters_fail_before_a_job_starts(aws):  # noqa: F811
    with pytest.raises(UserError, match="unknown rule Underfit"):
        debugger.estimator_kwargs(aws, {"rule-parameters": '{"Underfit": {}}'})
    with pytest.raises(UserError, match="save_interval"):
        debugger.debugger_hook_config(save_interval=0)


def test_the_flag_is_on_the_train_command_only():
    parser = cli.get_args_parser()
    assert parser.parse_args(["train", "--sagemaker-debugger"]).sagemaker_debugger
    assert not parser.parse_args(["train"]).sagemaker_debugger
    with pytest.raises(SystemExit):
        parser.parse_args(["tune", "--sagemaker-debugger"])
