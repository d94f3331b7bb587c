"""The training rules on hand-made observations: each fires on the condition AWS documents for it,
stays quiet otherwise, and takes its parameters per job."""
import logging

import pytest

from imgclf.debug.jobdata import JobData
from imgclf.debug.rules import (
    TRAINING_RULES,
    LossNotDecreasing,
    Overfit,
    Overtraining,
    PoorWeightInitialization,
    VanishingGradient,
    build_rules,
    parse_rule_parameters,
)
from imgclf.names import UserError


def epochs(*pairs):
    return [dict(epoch=i, train_loss=t, valid_loss=v) for i, (t, v) in enumerate(pairs, 1)]


def test_vanishing_gradient_fires_below_its_threshold_and_names_the_tensors(caplog):
    data = JobData(gradient_means=[(10, {"fc.weight": 1e-3, "fc.bias": 2e-3}), (20, {"fc.weight": 5e-8, "fc.bias": 1e-3})])
    rule = VanishingGradient()
    with caplog.at_level(logging.WARNING, "imgclf.rules"):
        rule.check(data)
    assert (rule.evaluations, rule.triggers, rule.datapoints) == (2, 1, 4)
    assert "fc.weight" in rule.events[0]["message"] and rule.events[0]["where"] == "step 20"
    assert "rule VanishingGradient triggered at step 20" in caplog.text
    strict = VanishingGradient(threshold=1e-2)
    strict.check(data)
    assert strict.triggers == 2


def test_overfit_compares_validation_with_training_loss_for_patience_epochs():
    data = JobData(epochs=epochs((1.0, 1.05), (0.8, 1.0), (0.7, 0.95)))  # ratios 0.05, 0.25, 0.36
    rule = Overfit()
    rule.check(data)
    assert rule.triggers == 2 and rule.events[0]["where"] == "epoch 2"
    patient = Overfit(patience=3)
    patient.check(data)
    assert patient.triggers == 0


def test_overtraining_fires_when_training_loss_stops_improving():
    improving = JobData(epochs=epochs(*[(2.0 - 0.2 * i, 2.0 - 0.2 * i) for i in range(8)]))
    rule = Overtraining()
    rule.check(improving)
    assert rule.triggers == 0 and rule.evaluations == 8
    flat = JobData(epochs=epochs(*[(1.0, 1.0)] * 7))
    rule = Overtraining()
    rule.check(flat)
    assert rule.triggers == 2  # epochs 6 and 7: five epochs without a 0.1 improvement on epoch 1
    assert rule.events[0]["where"] == "epoch 6" and "train_loss not improved" in rule.events[0]["message"]


def test_loss_not_decreasing_compares_windows_of_num_steps():
    falling = JobData(losses=[2.0 - 0.01 * i for i in range(40)])
    rule = LossNotDecreasing()
    rule.check(falling)
    assert (rule.evaluations, rule.triggers) == (3, 0)
    rising = JobData(losses=[1.0] * 10 + [1.2] * 10)
    rule = LossNotDecreasing()
    rule.check(rising)
    assert rule.triggers == 1 and rule.events[0]["where"] == "step 20"


def test_loss_not_decreasing_evaluates_incrementally():
    data = JobData(losses=[1.0] * 10)
    rule = LossNotDecreasing(num_steps=5)
    rule.check(data)
    data.losses.extend([0.5] * 5)
    rule.check(data)
    assert rule.evaluations == 2 and rule.triggers == 1  # 1.0 -> 1.0 flat, then 1.0 -> 0.5 decreasing


def test_poor_weight_initialization_on_activation_variances_gradients_and_loss():
    data = JobData(activation_variances=[(1, {"a_relu_input": 1.0, "b_relu_input": 50.0}),
                                         (2, {"a_relu_input": 1.0, "b_relu_input": 2.0})],
                   gradient_ranges=[(1, 1e-5)], losses=[1.0] * 10)
    rule = PoorWeightInitialization()
    rule.check(data)
    assert [e["where"] for e in rule.events] == ["step 1", "step 10"]
    assert "variance ratio 50 " in rule.events[0]["message"] and "range 1e-05" in rule.events[0]["message"]
    assert "mean loss of steps 1-5 1.0000" in rule.events[1]["message"]
    assert rule.evaluations == 3 and rule.datapoints == 2 + 1 + 10


def test_rule_parameters_per_job():
    overrides = parse_rule_parameters('{"Overfit": {"patience": 3}, "Overtraining": false}',
                                      {c.name for c in TRAINING_RULES})
    rules = {r.name: r for r in build_rules(TRAINING_RULES, overrides)}
    assert rules["Overfit"].params == {"start_step": 0, "patience": 3, "ratio_threshold": 0.1}
    assert "Overtraining" not in rules and len(rules) == 4


@pytest.mark.parametrize("text, message", [
    ('{"Overfit": {"patiense": 3}}', "no parameter patiense .*patience, ratio_threshold, start_step"),
    ('{"Underfit": {}}', "unknown rule Underfit"),
    ("patience=3", "not JSON"),
    ('{"Overfit": 3}', "object of parameters or false"),
])
def test_bad_rule_parameters_are_user_errors(text, message):
    with pytest.raises(UserError, match=message):
        build_rules(TRAINING_RULES, parse_rule_parameters(text, {c.name for c in TRAINING_RULES}))


def test_aws_defaults():
    defaults = {c.name: c.defaults for c in TRAINING_RULES}
    assert defaults["VanishingGradient"]["threshold"] == 1e-7
    assert defaults["Overfit"]["ratio_threshold"] == 0.1 and defaults["Overfit"]["patience"] == 1
    assert (defaults["Overtraining"]["patience_train"], defaults["Overtraining"]["patience_validation"],
            defaults["Overtraining"]["delta"]) == (5, 10, 0.1)
    assert defaults["PoorWeightInitialization"]["threshold"] == 10.0
    assert defaults["LossNotDecreasing"]["num_steps"] == 10
