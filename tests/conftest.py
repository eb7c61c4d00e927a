"""Shared test set-up: quiet TF logs, two logical CPUs for tf.distribute, paths to ../shared."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy tests have replicas to mirror over. This must happen
# before TF initializes its devices, i.e. here, before any test runs an op.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

REPO = pathlib.Path(__file__).resolve().parents[1]
# Reference data lives beside the checkout (CI and developers); users do not have it.
SHARED = pathlib.Path(os.environ.get("NORMALIZED_FACES_SHARED", REPO.parent / "shared"))


def shared_path(*parts):
    """A path under ../shared, or a skip that says why the test cannot run."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the project's shared reference data beside the checkout")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(20170)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """The tiny config's synthetic dataset, made once by the real data prep job."""
    from data_prep import synthetic

    folder = tmp_path_factory.mktemp("tiny_data")
    synthetic.make_tiny_data(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_data_dir):
    """A tiny training run (10 steps) on the tiny data: enough to export and call."""
    from normalized_faces import train

    model_dir = tmp_path_factory.mktemp("run")
    train.train(train.tiny_config(str(model_dir), data_dir=tiny_data_dir, train_steps=10, checkpoint_interval=10))
    return model_dir


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """The tiny run exported as export_dir/1."""
    from export import saved_model

    return saved_model.export(trained_run, tmp_path_factory.mktemp("exports"))
