"""Parameter groups (head vs backbone lr, no weight decay on norm layers and biases) and the schedule."""
import math

import pytest
import torch

from imgclf.artifact import network
from imgclf.train import backbone
from imgclf.train.hyperparameters import parse
from imgclf.train.optim import Schedule, build_optimizer, lr_factor, parameter_groups
from imgclf.train.recipe import RECIPES, resolve


def groups_by_name(model, **kw):
    return {g["name"]: g for g in parameter_groups(model, **kw)}


def test_backbone_trains_at_a_lower_lr_and_norm_layers_and_biases_do_not_decay():
    model = network.create_model("resnet18", 3)
    groups = groups_by_name(model, lr=0.1, weight_decay=1e-4, backbone_lr_ratio=0.1, norm_weight_decay=False)
    assert set(groups) == {"head", "head no-decay", "backbone", "backbone no-decay"}
    assert [g["name"] for g in parameter_groups(model, lr=0.1, weight_decay=0)][0] == "head"  # the reported lr
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["head"] == {id(model.fc.weight)} and ids["head no-decay"] == {id(model.fc.bias)}
    assert id(model.conv1.weight) in ids["backbone"]
    assert {id(model.bn1.weight), id(model.bn1.bias)} <= ids["backbone no-decay"]
    assert groups["head"]["lr"] == 0.1 and groups["backbone"]["lr"] == pytest.approx(0.01)
    assert groups["backbone"]["weight_decay"] == 1e-4 and groups["backbone no-decay"]["weight_decay"] == 0
    assert sum(len(g) for g in ids.values()) == len(list(model.parameters()))  # each parameter once


def test_norm_weight_decay_on_decays_everything_and_frozen_parameters_are_left_out():
    model = network.create_model("resnet18", 3)
    backbone.freeze_backbone(model)
    groups = groups_by_name(model, lr=0.1, weight_decay=1e-4, norm_weight_decay=True)
    assert list(groups) == ["head"] and len(groups["head"]["params"]) == 2


def test_optimizer_follows_the_recipe_and_its_switches():
    model = network.create_model("resnet18", 3)
    args = parse({"recipe": "finetune", "lr": "0.02", "momentum": "0.9"})
    opt = build_optimizer(model, args)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == 0.02 and lrs["backbone"] == pytest.approx(0.02 * RECIPES["finetune"]["backbone_lr_ratio"])
    off = build_optimizer(model, parse({"recipe": "finetune", "backbone-lr-ratio": "1", "norm-weight-decay": "true"}))
    assert {g["name"] for g in off.param_groups} == {"head", "backbone"}
    assert len({g["lr"] for g in off.param_groups}) == 1


def test_warmup_rises_linearly_then_cosine_decays_to_zero():
    f = [lr_factor(s, total_steps=10, warmup_steps=2, schedule="cosine") for s in range(11)]
    assert f[0] == pytest.approx(0.01) and f[1] == pytest.approx(0.505)
    assert f[2] == 1.0 and f[6] == pytest.approx(0.5) and f[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[2:], f[3:]))
    assert f[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert [lr_factor(s, total_steps=10, warmup_steps=0, schedule="constant") for s in (0, 9)] == [1.0, 1.0]


def test_schedule_sets_each_groups_lr_from_its_base():
    model = network.create_model("resnet18", 3)
    opt = torch.optim.SGD(parameter_groups(model, lr=0.1, weight_decay=0, backbone_lr_ratio=0.5), lr=0.1)
    schedule = Schedule(opt, epochs=2, steps_per_epoch=5, warmup_epochs=0, schedule="cosine")
    schedule.set_step(5)  # halfway
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.025, 0.05])
    schedule.set_step(0)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.05, 0.1])
