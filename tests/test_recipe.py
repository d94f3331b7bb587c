"""Recipes: their defaults, and each ingredient switched on its own through hyperparameters."""
import pytest

from imgclf.contract import UserError
from imgclf.hyperparameters import BY_NAME, parse
from imgclf.hpo import BEST_KNOWN, SEARCH_SPACES, search_space
from imgclf.recipe import DEFAULT_RECIPE, INGREDIENTS, RECIPES


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
        assert args.lr_schedule == "cosine" and args.auto_augment == "trivialaugment" and args.random_erase > 0
        assert args.eval_crop_ratio == pytest.approx(224 / 232)
    assert parse({"recipe": "lp-ft"}).lp_steps > 0 and parse({"recipe": "finetune"}).lp_steps == 0
    assert parse({}).recipe == DEFAULT_RECIPE


@pytest.mark.parametrize("raw, dest, value", [
    ({"label-smoothing": "0"}, "label_smoothing", 0.0), ({"ema-decay": "0"}, "ema_decay", 0.0),
    ({"warmup-epochs": "0"}, "warmup_epochs", 0.0), ({"backbone-lr-ratio": "1"}, "backbone_lr_ratio", 1.0),
    ({"auto-augment": "none"}, "auto_augment", "none"), ({"random-erase": "0"}, "random_erase", 0.0),
    ({"lp-steps": "0"}, "lp_steps", 0), ({"freeze": "true"}, "freeze", True),
    ({"lr-schedule": "constant"}, "lr_schedule", "constant"), ({"weight-decay": "0"}, "weight_decay", 0.0),
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
    assert search_space({}) is SEARCH_SPACES[DEFAULT_RECIPE]
    assert search_space({"recipe": "finetune"})["lr"] == SEARCH_SPACES["linear"]["lr"]  # the head's lr range
