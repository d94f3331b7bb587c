"""Recipes: their defaults, and each ingredient switched on its own through hyperparameters."""
import pytest

from imgclf.hpo import SEARCH_SPACES, search_space
from imgclf.names import UserError
from imgclf.train.hyperparameters import BY_NAME, parse
from imgclf.train.recipe import BEST_KNOWN, DEFAULT_RECIPE, INGREDIENTS, RECIPES


def test_every_ingredient_is_a_hyperparameter_left_to_the_recipe():
    for name in INGREDIENTS:
        hp = BY_NAME[name.replace("_", "-")]
        assert hp.default is None, name
        for recipe in RECIPES.values():
            assert hp.in_range(recipe[name]) and (hp.choices is None or recipe[name] in hp.choices), name


def test_linear_is_the_original_frozen_head_with_the_tuning_jobs_best_values():
    args = parse({"recipe": "linear"})
    assert args.freeze and (args.lr, args.momentum, args.batch_size) == (
        BEST_KNOWN["lr"], BEST_KNOWN["momentum"], BEST_KNOWN["batch-size"])
    assert (args.weight_decay, args.label_smoothing, args.ema_decay, args.lp_steps) == (0, 0, 0, 0)
    assert (args.auto_augment, args.random_erase, args.lr_schedule, args.eval_crop_ratio) == (
        "none", 0, "constant", 0.875)


def test_finetune_and_lp_ft_train_everything_with_the_modern_ingredients():
    for name in ("finetune", "lp-ft"):
        args = parse({"recipe": name})
        assert not args.freeze and args.backbone_lr_ratio < 1 and not args.norm_weight_decay
        assert args.label_smoothing > 0 and args.ema_decay > 0 and args.warmup_epochs > 0
        assert args.lr_schedule == "cosine" and args.freeze_bn_stats
        assert (args.auto_augment, args.random_erase) == ("none", 0)  # measured worse in 15 epochs
        assert args.eval_crop_ratio == pytest.approx(224 / 232)
        assert args.batch_size == BEST_KNOWN["batch-size"] // 2  # twice the steps in the same epochs
    assert not parse({"recipe": "finetune", "pretrained": "false"}).freeze_bn_stats  # no statistics to keep
    assert parse({"recipe": "lp-ft"}).lp_steps > 0 and parse({"recipe": "finetune"}).lp_steps == 0


def test_the_default_is_finetune_and_linear_for_a_frozen_backbone():
    assert DEFAULT_RECIPE == "finetune" and parse({}).recipe == "finetune" and not parse({}).freeze
    assert parse({"freeze": "false"}).recipe == "finetune"
    for flag in ("freeze", "features", "extract-features"):
        args = parse({flag: "true"})
        assert args.recipe == "linear" and args.freeze  # a frozen backbone, as features.check_job asks
        assert (args.label_smoothing, args.ema_decay, args.lr_schedule) == (0, 0, "constant")
    assert parse({"features": "true", "recipe": "lp-ft"}).recipe == "lp-ft"  # named: kept (and refused later)


@pytest.mark.parametrize("raw, dest, value", [
    ({"label-smoothing": "0"}, "label_smoothing", 0.0), ({"ema-decay": "0"}, "ema_decay", 0.0),
    ({"warmup-epochs": "0"}, "warmup_epochs", 0.0), ({"backbone-lr-ratio": "1"}, "backbone_lr_ratio", 1.0),
    ({"auto-augment": "none"}, "auto_augment", "none"), ({"random-erase": "0"}, "random_erase", 0.0),
    ({"lp-steps": "0"}, "lp_steps", 0), ({"freeze": "true"}, "freeze", True),
    ({"lr-schedule": "constant"}, "lr_schedule", "constant"), ({"weight-decay": "0"}, "weight_decay", 0.0),
    ({"crop-scale": "1"}, "crop_scale", 1.0), ({"freeze-bn-stats": "false"}, "freeze_bn_stats", False),
    ({"batch-size": "64"}, "batch_size", 64),
])
def test_an_ingredient_set_alone_wins_over_the_recipe(raw, dest, value):
    args = parse({"recipe": "lp-ft", **raw})
    assert getattr(args, dest) == value
    others = [n for n in INGREDIENTS if n != dest]
    assert all(getattr(args, n) == RECIPES["lp-ft"][n] for n in others)


def test_bad_recipe_or_ingredient_values_name_the_choices():
    with pytest.raises(UserError, match="invalid choice: 'fast'"):
        parse({"recipe": "fast"})
    with pytest.raises(UserError, match="random-erase=1.5 is out of range"):
        parse({"random-erase": "1.5"})


def test_the_tuner_searches_the_recipes_space():
    assert "backbone-lr-ratio" not in search_space({"recipe": '"linear"'})
    assert search_space({"recipe": "finetune"}) is SEARCH_SPACES["finetune"]
    assert search_space({}) is SEARCH_SPACES["finetune"]
    assert search_space({"features": True}) is search_space({"freeze": '"true"'}) is SEARCH_SPACES["linear"]
    assert search_space({"recipe": "finetune"})["lr"] == SEARCH_SPACES["linear"]["lr"]  # the head's lr range
    assert search_space({"recipe": "lp-ft"})["backbone-lr-ratio"].scale == "Logarithmic"


# ---------------------------------------------------------------------------------------------
# each recipe end to end on tiny images (a random "ImageNet" resnet18 in the pretrained channel)

import json  # noqa: E402

import torch  # noqa: E402

from imgclf.artifact import network  # noqa: E402
from imgclf.artifact.card import load_card  # noqa: E402
from imgclf.train.contract import TrainingEnvironment  # noqa: E402
from imgclf.train.job import run  # noqa: E402

TINY = {"arch": "resnet18", "image-size": "32", "batch-size": "8", "epochs": "2", "num-workers": "0",
        "log-interval": "0", "serving-formats": "false", "profiler": "false", "rules": "false", "amp": "false"}


def recipe_job(tmp_path, data, **hyperparameters):
    backbone = network.create_model("resnet18", 1000)
    (tmp_path / "pretrained").mkdir(exist_ok=True)
    torch.save(backbone.state_dict(), tmp_path / "pretrained" / "resnet18.pth")
    env = TrainingEnvironment(
        model_dir=tmp_path / "model", output_data_dir=tmp_path / "out" / "data", output_dir=tmp_path / "out",
        checkpoint_dir=tmp_path / "checkpoints", hyperparameters={**TINY, **hyperparameters},
        channels={"training": data / "train", "validation": data / "valid", "test": data / "test",
                  "pretrained": tmp_path / "pretrained"})
    return env, backbone


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_each_recipe_trains_and_stores_its_eval_transform(tmp_path, image_folders, caplog, recipe):
    env, backbone = recipe_job(tmp_path, image_folders, recipe=recipe)
    caplog.set_level("INFO")
    assert run(env) == 0
    history = json.loads((env.output_data_dir / "metrics.json").read_text())
    net, card = network.load_artifact(env.model_dir)
    frozen = torch.equal(net.layer1[0].conv1.weight, backbone.layer1[0].conv1.weight)
    assert frozen == (recipe == "linear")
    assert card.eval.resize_size == round(32 / RECIPES[recipe]["eval_crop_ratio"])
    assert ("ema_valid_acc" in history[0]) == (recipe != "linear")
    assert ("linear probe:" in caplog.text) == (recipe == "lp-ft")
    assert ("keeping the weights of epoch" in caplog.text) == (recipe != "linear")
    assert 0 <= history[-1]["test_acc"] <= 1


def test_lp_ft_probe_fits_the_head_before_fine_tuning(tmp_path, image_folders, caplog):
    env, _ = recipe_job(tmp_path, image_folders, recipe="lp-ft", epochs="1", **{"lp-steps": "50"})
    caplog.set_level("INFO")
    assert run(env) == 0
    probe = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("linear probe:"))
    assert "50 L-BFGS steps on 36 cached features" in probe  # 3 classes x 12 training images
    assert (env.checkpoint_dir / "features" / "manifest.json").is_file()
    manifest = json.loads((env.checkpoint_dir / "features" / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "valid"}  # the test set is never used for choices


def test_a_fine_tuned_network_keeps_its_openvino_copies_in_agreement(tmp_path, image_folders):
    pytest.importorskip("openvino")
    env, _ = recipe_job(tmp_path, image_folders, recipe="finetune", epochs="1", **{"serving-formats": "true"})
    assert run(env) == 0
    card = load_card(env.model_dir)
    fp32, int8 = card.formats["openvino_fp32"].agreement, card.formats["openvino_int8"].agreement
    assert fp32.images == 12 and fp32.top1_agreement == 1.0  # the same network in another runtime
    assert int8.images == 12 and int8.top1_agreement >= 0.75
