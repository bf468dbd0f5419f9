"""Run folders: one Recipe turns a preset, flags and overrides into a config; file names live in one place."""

from __future__ import annotations

import argparse

import pytest

from vfmxai import cli
from vfmxai.errors import VfmxaiError
from vfmxai.run_folder import Recipe


def test_flags_come_before_overrides_and_a_trial_seed_comes_last() -> None:
    recipe = Recipe(
        "toy", "folder", "data/", overrides=("train.seed=9", "train.epochs=3"),
        fields={"train.seed": 4, "data.seed": 4, "backbone.name": "tiny"},
    )
    config = recipe.config()
    assert (config.train.seed, config.data.seed, config.train.epochs) == (9, 4, 3)  # --set wins over --seed
    assert (config.data.dataset, config.data.root, config.backbone.name) == ("folder", "data/", "tiny")
    trial = recipe.config(seed=2)
    assert (trial.train.seed, trial.data.seed) == (2, 4)  # reproduce: the trial's seed, the recipe's split
    assert recipe.config() == config  # a recipe is not changed by being used


def test_a_wrong_field_or_override_names_itself() -> None:
    with pytest.raises(VfmxaiError, match="^--set train.lrr=1: unknown field 'train.lrr'$"):
        Recipe("toy", "synthetic", overrides=("train.lrr=1",)).config()
    with pytest.raises(VfmxaiError, match="^trian.seed: unknown section 'trian'$"):
        Recipe("toy", "synthetic", fields={"trian.seed": 1}).config()
    with pytest.raises(VfmxaiError, match="unknown preset 'toi'"):
        Recipe("toi", "synthetic").config()


def test_every_command_has_one_handler() -> None:
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(cli.COMMANDS) == set(commands)
