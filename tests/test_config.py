"""TrainConfig's parts, and the flags derived from the config dataclasses (train_main, data prep)."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from data_prep import filters, stages
from normalized_faces import config_flags
from normalized_faces.config import ModelConfig, RuntimeConfig, TrainConfig, TrainerConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_flat_names_route_to_their_part():
    config = TrainConfig().replace(feature_dim=64, batch_size=4, model_dir="/x", landmark_hidden=(32, 16))
    assert config.model.feature_dim == 64 and config.model.landmark_hidden == (32, 16)
    assert config.trainer.batch_size == 4 and config.runtime.model_dir == "/x"
    assert TrainConfig().model.feature_dim == 1024  # replace made a copy
    with pytest.raises(TypeError, match="no field batchsize"):
        TrainConfig().replace(batchsize=4)


def test_names_are_unique_across_parts():
    names = [f.name for part in (ModelConfig, TrainerConfig, RuntimeConfig) for f in dataclasses.fields(part)]
    assert len(names) == len(set(names))


def test_json_round_trip_and_old_flat_files():
    config = TrainConfig().replace(feature_dim=64, landmark_hidden=(32,), model_dir="/run", texture_fc_size=56)
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    # A config.json from before the parts: flat keys, and keys no longer known are ignored.
    old = {**config.flat(), "landmark_hidden": [32], "retired_setting": 3}
    assert TrainConfig.from_json(old) == config


def test_check_names_the_bad_value():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig().replace(precision="float8", model_dir="/x").check()
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TrainConfig().replace(batch_size=0, model_dir="/x").check()
    with pytest.raises(ValueError, match="model_dir is required"):
        TrainConfig().check()


@pytest.mark.parametrize("config", [TrainConfig(), stages.PrepConfig()], ids=["TrainConfig", "PrepConfig"])
def test_every_field_is_a_flag_with_its_default(config):
    values = flags.FlagValues()
    names = config_flags.define_flags(config, flag_values=values)
    values(["prog"])
    assert len(names) == len(config_flags.leaf_fields(config))
    assert config_flags.overrides_from_flags(config, values) == {}
    every = config_flags.overrides_from_flags(config, values, explicit_only=False)
    assert config_flags.replace_nested(config, **every) == config


def test_flags_given_override_nested_fields():
    values = flags.FlagValues()
    config_flags.define_flags(stages.PrepConfig(), flag_values=values)
    values(["prog", "--max_yaw=10", "--nofilters", "--num_morphs=7"])
    prep = config_flags.replace_nested(
        stages.PrepConfig(), **config_flags.overrides_from_flags(stages.PrepConfig(), values)
    )
    assert prep.thresholds == dataclasses.replace(filters.FilterThresholds(), max_yaw=10.0)
    assert prep.apply_filters is False and prep.num_morphs == 7

    values = flags.FlagValues()
    config_flags.define_flags(TrainConfig(), flag_values=values)
    values(["prog", "--landmark_hidden=64,32", "--precision=float32", "--texture_fc_size=56"])
    train_config = TrainConfig().replace(**config_flags.overrides_from_flags(TrainConfig(), values))
    assert train_config.model.landmark_hidden == (64, 32) and train_config.runtime.precision == "float32"
    assert train_config.model.texture_fc_size == 56


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass
    class Bare:
        size: int = 3

    with pytest.raises(ValueError, match="Bare.size has no help"):
        config_flags.define_flags(Bare(), flag_values=flags.FlagValues())


@pytest.mark.parametrize("command", [["train_main.py"], ["-m", "data_prep.pipeline"]])
def test_help_lists_the_config_flags(command):
    # absl's --help prints to stdout and exits with status 1.
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    for name in (
        ("--batch_size", "--feature_dim", "--precision")
        if command == ["train_main.py"]
        else ("--max_yaw", "--num_morphs", "--neighbour_texture_mix")
    ):
        assert name in result.stdout, name
