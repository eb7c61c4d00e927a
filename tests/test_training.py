"""The model and its training: losses, frozen encoder, tf.distribute, resume after SIGKILL, NaN policy."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from normalized_faces import data, train, visualize
from normalized_faces.model import EncoderHead, LandmarkDecoder, TextureDecoder

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny(tmp_path, tiny_data_dir, **overrides):
    return train.tiny_config(str(tmp_path / "run"), data_dir=tiny_data_dir, **overrides)


def _model(config, tiny_data_dir):
    metadata = data.load_metadata(tiny_data_dir)
    return train.build_model(config, metadata["mean_landmarks"], metadata["image_size"])


def _batch(tiny_data_dir, size=4):
    return next(iter(data.make_dataset(tiny_data_dir, "train", batch_size=size, keys=data.TRAINING_KEYS)))


# --- Layers ----------------------------------------------------------------------------------------


def test_layers_round_trip_their_config_and_follow_the_paper():
    mean = np.random.default_rng(0).uniform(50, 170, size=[68, 2])
    for layer in (
        EncoderHead(64),
        LandmarkDecoder(mean, (32, 16)),
        TextureDecoder("cnn"),
        TextureDecoder("fc", size=224, fc_size=28),
    ):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    decoder = TextureDecoder("cnn", base_channels=256, min_channels=32)
    out = decoder(tf.zeros([2, 64]))
    assert out.shape == (2, 224, 224, 3)
    # FC to 14 x 14 x 256, four 5 x 5 stride-2 transposed convs to 224 x 224 x 32: channels
    # max(256 / 2^i, 32) = 128, 64, 32, 32; then a 1 x 1 conv to RGB.
    assert decoder.project.units == 14 * 14 * 256
    assert [(conv.filters, conv.kernel_size, conv.strides) for conv in decoder.upsample] == [
        (c, (5, 5), (2, 2)) for c in (128, 64, 32, 32)
    ]
    assert decoder.to_rgb.kernel_size == (1, 1) and decoder.to_rgb.filters == 3
    assert TextureDecoder("fc", size=224, fc_size=28)(tf.zeros([1, 8])).shape == (1, 224, 224, 3)
    landmarks = LandmarkDecoder(mean)(tf.zeros([3, 8]))
    np.testing.assert_allclose(
        landmarks.numpy(), np.broadcast_to(mean, [3, 68, 2]), atol=1e-4
    )  # starts at the mean face
    with pytest.raises(ValueError, match="texture decoder kind"):
        TextureDecoder("gan")
    with pytest.raises(ValueError, match="texture upsampling"):
        TextureDecoder("cnn", upsampling="nearest")


def test_resize_upsampling_has_no_checkerboard_where_transposed_convs_do():
    """The demo's mottled faces: the paper's 5 x 5 stride-2 transposed convs overlap unevenly and
    print a period-2 pattern (visible from initialization); bilinear x2 + 3 x 3 conv does not."""
    resize = TextureDecoder("cnn", base_channels=64, min_channels=16, upsampling="resize")
    clone = TextureDecoder.from_config(resize.get_config())
    assert clone.get_config() == resize.get_config() and clone.upsampling == "resize"
    features = tf.random.stateless_normal([4, 32], seed=[0, 1])
    ratios = {}
    for kind in ("transpose", "resize"):
        keras.utils.set_random_seed(0)
        decoder = TextureDecoder("cnn", base_channels=64, min_channels=16, upsampling=kind)
        textures = decoder(features).numpy()
        assert textures.shape == (4, 224, 224, 3)
        ratios[kind] = np.median([visualize.checkerboard_ratio(t) for t in textures])
    # At initialization the last layers' random weights make white-ish noise (a flat spectrum: ~1);
    # measured: transpose ~65, resize ~1.0.
    assert ratios["resize"] < 1.5, ratios
    assert ratios["transpose"] > 10 * ratios["resize"], ratios


# --- One step ------------------------------------------------------------------------------------


def test_train_steps_change_only_the_decoders(tmp_path, tiny_data_dir):
    config = _tiny(tmp_path, tiny_data_dir)
    model = _model(config, tiny_data_dir)
    encoder_before = [w.numpy().copy() for w in model.encoder.weights]
    trainable_before = {id(w): w.numpy().copy() for w in model.trainable_variables}
    assert model.encoder.trainable_weights == [] and len(model.trainable_variables) > 0
    # Two steps: the landmark MLP's output layer starts at zero, so its hidden layer only gets a
    # gradient from the second step on.
    history = model.fit(
        data.make_dataset(tiny_data_dir, "train", batch_size=4, repeat=True), steps_per_epoch=2, epochs=1, verbose=0
    )
    losses = {k: v[-1] for k, v in history.history.items()}
    assert set(losses) == {
        "loss",
        "landmark_loss",
        "texture_loss",
        "identity_loss",
        "identity_similarity",
        "nonfinite_batches",
    }
    assert all(np.isfinite(v) for v in losses.values())
    for before, weight in zip(encoder_before, model.encoder.weights):
        np.testing.assert_array_equal(before, weight.numpy())
    changed = [not np.array_equal(trainable_before[id(w)], w.numpy()) for w in model.trainable_variables]
    assert all(changed), "every head/decoder variable gets a gradient"
    decoder_variables = {
        id(v) for part in (model.head, model.landmark_decoder, model.texture_decoder) for v in part.trainable_variables
    }
    assert {id(v) for v in model.trainable_variables} == decoder_variables


def test_without_identity_loss_the_warp_is_not_run(tmp_path, tiny_data_dir):
    config = _tiny(tmp_path, tiny_data_dir, identity_weight=0.0)
    model = _model(config, tiny_data_dir)

    def forbidden(*args, **kwargs):
        raise AssertionError("the warp ran in a training step without the identity loss")

    model.renderer.call = forbidden
    history = model.fit(
        data.make_dataset(tiny_data_dir, "train", batch_size=4, repeat=True), steps_per_epoch=2, epochs=1, verbose=0
    )
    assert "identity_loss" not in history.history and np.isfinite(history.history["loss"][-1])


def test_model_outputs(tmp_path, tiny_data_dir):
    model = _model(_tiny(tmp_path, tiny_data_dir), tiny_data_dir)
    batch = _batch(tiny_data_dir, 2)
    outputs = model(batch["image"])
    assert outputs["landmarks"].shape == (2, 68, 2)
    assert outputs["texture"].shape == outputs["rendered"].shape == (2, 224, 224, 3)
    assert outputs["features"].shape == (2, 256) and outputs["embedding"].shape == (2, 128)
    # The renderer is the project's warp from the mean landmarks: with predicted = mean, rendered = texture.
    np.testing.assert_allclose(
        outputs["landmarks"].numpy(), np.broadcast_to(model.mean_landmarks, [2, 68, 2]), atol=1e-3
    )
    np.testing.assert_allclose(outputs["rendered"].numpy(), outputs["texture"].numpy(), atol=1e-3)


# --- Learning ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overfits_32_records(tmp_path, tiny_data_dir):
    config = _tiny(tmp_path, tiny_data_dir, learning_rate=1e-3)
    model = _model(config, tiny_data_dir)
    records = data.make_dataset(tiny_data_dir, "train").take(32).cache()
    assert sum(1 for _ in records) == 32
    dataset = records.repeat().batch(8)
    first = model.evaluate(records.batch(8), verbose=0, return_dict=True)["loss"]
    model.fit(dataset, steps_per_epoch=300, epochs=1, verbose=0)
    last = model.evaluate(records.batch(8), verbose=0, return_dict=True)
    print(
        f"overfitting 32 records, 300 steps: total loss {first:.4f} -> {last['loss']:.4f} ({first / last['loss']:.1f}x); {last}"
    )
    assert last["loss"] < first / 5


def test_mirrored_strategy_matches_one_device(tmp_path, tiny_data_dir):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    batch = _batch(tiny_data_dir, 4)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    config = _tiny(tmp_path, tiny_data_dir)
    keras.utils.set_random_seed(1)
    single = _model(config, tiny_data_dir)
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        mirrored = _model(config, tiny_data_dir)
    for a, b in zip(single.weights, mirrored.weights):
        b.assign(a.numpy())
    # Plain SGD, not Adam: Adam normalizes each update, which would hide a wrongly scaled gradient
    # (e.g. replicas' gradients summed but not divided); SGD's update is the gradient itself.
    for model, scope in ((single, tf.distribute.get_strategy()), (mirrored, strategy)):
        with scope.scope():
            model.compile(optimizer=keras.optimizers.SGD(0.5))
            model.optimizer.build(model.trainable_variables)
    before = [v.numpy().copy() for v in single.trainable_variables]
    one = single.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0).history
    two = mirrored.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0).history
    print("one device:", {k: v[-1] for k, v in one.items()}, "mirrored x2:", {k: v[-1] for k, v in two.items()})
    # Same global batch split over two replicas: the same mean losses and the same update, up to
    # float32 summation order (and the warp's float32 solve, ~1e-4 relative).
    for key in one:
        assert two[key][-1] == pytest.approx(one[key][-1], rel=1e-3, abs=1e-6), key
    moved = 0
    for start, a, b in zip(before, single.trainable_variables, mirrored.trainable_variables):
        step_a, step_b = a.numpy() - start, b.numpy() - start
        scale = np.abs(step_a).max()  # zero for the landmark MLP's hidden layer on the first step
        # 5e-3 of the largest update: the to_rgb bias's gradient is a float32 sum over ~200k
        # per-pixel terms of both signs, and one device vs two replicas sum them in different
        # orders; CI's CPU measured 1.1e-3 there (this machine < 1e-3). The bug this test is for,
        # replicas' gradients summed instead of averaged, is off by 100%.
        np.testing.assert_allclose(step_b, step_a, atol=5e-3 * scale, err_msg=a.path)
        moved += scale > 0
    assert moved >= len(before) - 2


# --- The driver: resume, finished runs, NaN --------------------------------------------------------


def _train_main(model_dir, data_dir, *flags, env=None):
    return [
        sys.executable,
        str(REPO / "train_main.py"),
        "--config=tiny",
        f"--model_dir={model_dir}",
        f"--data_dir={data_dir}",
        *flags,
    ]


def _steps(model_dir):
    state = tf.train.get_checkpoint_state(str(pathlib.Path(model_dir) / "checkpoints"))
    return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_data_dir):
    model_dir = tmp_path / "run"
    command = _train_main(
        model_dir, tiny_data_dir, "--train_steps=60", "--checkpoint_interval=10", "--identity_weight=0"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s >= 20 for s in _steps(model_dir)):
        time.sleep(0.2)
        assert process.poll() is None, process.stdout.read()
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(_steps(model_dir))
    assert 20 <= killed_at < 60
    for step in _steps(model_dir):  # every checkpoint left behind is whole
        reader = tf.train.load_checkpoint(str(model_dir / "checkpoints" / f"ckpt-{step}"))
        assert reader.get_variable_to_shape_map()
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"at step {killed_at}" in resumed.stdout
    assert (
        f"step {killed_at + 10}/60" in resumed.stdout and f"step {killed_at}/60" not in resumed.stdout
    )  # no second copy
    assert max(_steps(model_dir)) == 60
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stdout and "already trained to step 60" in again.stdout
    config = json.loads((model_dir / "config.json").read_text())
    assert config["trainer"]["train_steps"] == 60 and config["model"]["encoder"] == "dlib_resnet"
    assert list((model_dir / "samples").glob("step_*.png")) and list(
        (model_dir / "logs").rglob("events.out.tfevents.*")
    )


def _data_with_nan_landmarks(tiny_data_dir, tmp_path, count=None):
    """A copy of the tiny data plus a training shard of `count` records (default: as many as there
    are) with a NaN landmark."""
    folder = tmp_path / "nan_data"
    shutil.copytree(tiny_data_dir, folder)
    records = [r.numpy() for r in tf.data.TFRecordDataset(data.record_files(folder, "train"))]
    with tf.io.TFRecordWriter(str(folder / "train-99999-of-99999.tfrecord")) as writer:
        for serialized in records[:count]:
            example = tf.train.Example.FromString(serialized)
            example.features.feature["landmarks"].float_list.value[7] = float("nan")
            writer.write(example.SerializeToString())
    return str(folder)


def test_nan_loss_stops_training_naming_the_step(tmp_path, tiny_data_dir):
    nan_data = _data_with_nan_landmarks(tiny_data_dir, tmp_path)
    config = train.tiny_config(
        str(tmp_path / "run"), data_dir=nan_data, train_steps=40, checkpoint_interval=20, identity_weight=0.0
    )
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss at step \d+: that batch.s update was skipped, the weights are unchanged; training stopped",
    ):
        train.train(config)
    model = _model(config, nan_data)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    if latest:
        checkpoint.restore(latest)
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


def test_a_run_stops_at_train_steps_between_checkpoint_intervals(tmp_path, tiny_data_dir):
    """train_steps 6 with checkpoints every 4: 6 optimizer steps, the last checkpoint at 6 (the
    last interval used to run whole: 8 steps)."""
    result = train.train(_tiny(tmp_path, tiny_data_dir, train_steps=6, checkpoint_interval=4, identity_weight=0.0))
    assert result["step"] == 6
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-6")


def test_nan_loss_can_be_skipped(tmp_path, tiny_data_dir):
    nan_data = _data_with_nan_landmarks(tiny_data_dir, tmp_path, count=2)
    config = train.tiny_config(
        str(tmp_path / "run"),
        data_dir=nan_data,
        train_steps=20,
        checkpoint_interval=10,
        identity_weight=0.0,
        nonfinite="skip",
    )
    result = train.train(config)
    skipped = len(result["nonfinite_steps"])
    print(f"skipped {skipped} of 20 batches: {result['nonfinite_steps']}")
    assert result["status"] == "trained" and skipped > 0
    model = _model(config, nan_data)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
        tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    )
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)
    assert int(model.optimizer.iterations.numpy()) == result["step"] == 20 - skipped


def test_mixed_precision_trains_and_leaves_the_global_policy_alone(tmp_path, tiny_data_dir):
    config = _tiny(tmp_path, tiny_data_dir, train_steps=2, checkpoint_interval=2, precision="mixed_float16")
    result = train.train(config)
    assert result["step"] == 2
    assert all(np.isfinite(v[-1]) for v in result["history"].values())
    assert keras.mixed_precision.global_policy().name == "float32"


def test_changing_the_architecture_of_an_existing_run_is_refused(tmp_path, tiny_data_dir):
    config = _tiny(tmp_path, tiny_data_dir, train_steps=2, checkpoint_interval=2, identity_weight=0.0)
    train.train(config)
    with pytest.raises(ValueError, match="different model .*feature_dim"):
        train.train(_tiny(tmp_path, tiny_data_dir, train_steps=4, feature_dim=64))
    # The trainer and runtime parts may change between resumes.
    resumed = train.train(
        _tiny(tmp_path, tiny_data_dir, train_steps=4, checkpoint_interval=2, identity_weight=0.0, learning_rate=5e-4)
    )
    assert resumed["step"] == 4


# --- Several machines ------------------------------------------------------------------------------


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_on_localhost(tmp_path, tiny_data_dir):
    model_dir = tmp_path / "run"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        env = dict(os.environ, TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="2")
        command = _train_main(
            model_dir,
            tiny_data_dir,
            "--strategy=multi_worker_mirrored",
            "--train_steps=6",
            "--checkpoint_interval=3",
            "--identity_weight=0",
        )
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        outputs.append(out)
        assert process.returncode == 0, out[-3000:]
    assert "step 6/6" in outputs[0]
    assert _steps(model_dir) == [3, 6]
    assert not list((model_dir / "checkpoints").glob(".worker_*"))  # the other worker's scratch copy is gone
    config = train.tiny_config(str(model_dir), data_dir=tiny_data_dir)
    model = _model(config, tiny_data_dir)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).restore(
        str(model_dir / "checkpoints" / "ckpt-6")
    ).assert_existing_objects_matched()
    assert int(model.optimizer.iterations.numpy()) == 6


def _one_step_run_with_distinct_weights(tmp_path, tiny_data_dir):
    """A 1-step tiny run in tmp_path/run, and a model of its configuration whose every trained variable
    holds distinct random values (not yet saved)."""
    config = _tiny(tmp_path, tiny_data_dir, train_steps=1, checkpoint_interval=1, identity_weight=0.0)
    train.train(config)
    model = _model(config, tiny_data_dir)
    rng = np.random.default_rng(3)
    for variable in model.trainable_variables:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    return model


def test_checkpoints_hold_every_weight(tmp_path, tiny_data_dir):
    # Layers kept in Python lists would silently drop out of tf.train.Checkpoint; restore a run
    # whose every variable was set to a distinct value and compare them all.
    from normalized_faces import inference

    model = _one_step_run_with_distinct_weights(tmp_path, tiny_data_dir)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer), str(tmp_path / "run" / "checkpoints"), 3
    )
    manager.save(checkpoint_number=99)
    restored = inference.restore_training_model(tmp_path / "run")
    assert len(restored.weights) == len(model.weights)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_restore_needs_every_trained_variable_but_not_the_frozen_encoders_paths(tmp_path, tiny_data_dir):
    # Runs trained before FaceNet's 1x1 convolutions were wrapped (PointwiseConv) hold the frozen
    # encoder at other checkpoint paths; emulated here by a checkpoint without the encoder at all.
    from normalized_faces import inference

    model = _one_step_run_with_distinct_weights(tmp_path, tiny_data_dir)
    children = model._trackable_children()
    assert "encoder" in children and "texture_decoder" in children

    def save_without(*left_out):
        """Saves the run's latest checkpoint (Checkpoint.save updates the state file) without those children."""
        view = tf.Module()
        for name, child in children.items():
            if name not in left_out:
                setattr(view, name, child)
        tf.train.Checkpoint(model=view).save(str(tmp_path / "run" / "checkpoints" / "ckpt"))

    save_without("encoder")
    restored = inference.restore_training_model(tmp_path / "run")
    for a, b in zip(model.weights, restored.weights):  # the encoder as its weights file has it: the same
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    save_without("encoder", "texture_decoder")
    with pytest.raises(ValueError, match=r"does not hold \d+ of the model's \d+ trained variables.*texture_decoder"):
        inference.restore_training_model(tmp_path / "run")


# --- The encoder cache -----------------------------------------------------------------------------


def test_encoder_cache_holds_the_encoders_outputs_and_training_losses_are_unchanged(tmp_path, tiny_data_dir):
    from normalized_faces import encoder_cache

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir, ignore=shutil.ignore_patterns(encoder_cache.CACHE_FOLDER))
    config = _tiny(tmp_path, str(data_dir))
    model = _model(config, str(data_dir))
    lines = []
    folder = encoder_cache.build(str(data_dir), model.encoder, report=lines.append)
    manifest = encoder_cache.load_manifest(folder)
    assert manifest["feature_dim"] == 256 and manifest["embedding_dim"] == 128 and len(lines) == len(manifest["shards"])
    assert sum(s["records"] for s in manifest["shards"].values()) == sum(
        1 for split in data.SPLITS for f in data.record_files(str(data_dir), split) for _ in tf.data.TFRecordDataset(f)
    )
    # Built once: a second call reuses it; another encoder configuration gets another folder.
    assert encoder_cache.build(str(data_dir), model.encoder, report=lines.append) == folder and len(lines) == len(
        manifest["shards"]
    )
    from normalized_faces.encoders import get_encoder

    assert encoder_cache.cache_dir(str(data_dir), get_encoder("dlib_resnet", aligned_size=200)) != folder
    keys = data.TRAINING_KEYS + ("features", "embedding")
    batch = next(iter(data.make_dataset(str(data_dir), "train", batch_size=6, keys=keys, encoder_cache=folder)))
    fresh = model.encoder(batch["image"])
    np.testing.assert_allclose(batch["features"].numpy(), fresh["features"].numpy(), atol=1e-5)
    np.testing.assert_allclose(batch["embedding"].numpy(), fresh["embedding"].numpy(), atol=1e-6)
    cached_losses = model.compute_losses(batch, training=False)
    plain_losses = model.compute_losses({k: batch[k] for k in data.TRAINING_KEYS}, training=False)
    for name in ("loss", "landmark_loss", "texture_loss", "identity_loss"):
        np.testing.assert_allclose(cached_losses[name].numpy(), plain_losses[name].numpy(), rtol=1e-5, err_msg=name)


def test_a_stale_encoder_cache_fails_loudly(tmp_path, tiny_data_dir):
    from normalized_faces import encoder_cache

    data_dir = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data_dir, ignore=shutil.ignore_patterns(encoder_cache.CACHE_FOLDER))
    model = _model(_tiny(tmp_path, str(data_dir)), str(data_dir))
    folder = encoder_cache.build(str(data_dir), model.encoder, report=lambda line: None)
    # Records rewritten in another order (as a new data prep run would): the cache no longer lines up.
    shard = data.record_files(str(data_dir), "train")[0]
    records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    with tf.io.TFRecordWriter(shard) as writer:
        for record in reversed(records):
            writer.write(record)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match these records"):
        for _ in data.make_dataset(str(data_dir), "train", batch_size=4, encoder_cache=folder):
            pass
    # A new shard (records added) is cached on the next build; the others are kept.
    shutil.copyfile(shard, data_dir / "train-99999-of-99999.tfrecord")
    lines = []
    encoder_cache.build(str(data_dir), model.encoder, report=lines.append)
    assert len(lines) == 1 and "train-99999-of-99999" in lines[0]


def test_identity_loss_rendered_as_a_chip_agrees_with_rendering_the_frame(tmp_path, tiny_data_dir):
    """The chip path (default) and the frame path (warp, then re-frame) see nearly the same face."""
    chip_model = _model(_tiny(tmp_path, tiny_data_dir), tiny_data_dir)
    frame_model = _model(_tiny(tmp_path, tiny_data_dir, identity_render="frame"), tiny_data_dir)
    frame_model.set_weights(chip_model.get_weights())
    batch = _batch(tiny_data_dir)
    chip, frame = chip_model.compute_losses(batch, training=False), frame_model.compute_losses(batch, training=False)
    print(f"identity loss: chip {float(chip['identity_loss']):.5f}, frame {float(frame['identity_loss']):.5f}")
    np.testing.assert_allclose(chip["identity_loss"].numpy(), frame["identity_loss"].numpy(), atol=5e-3)
    np.testing.assert_allclose(chip["texture_loss"].numpy(), frame["texture_loss"].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="identity_render must be one of"):
        _model(_tiny(tmp_path, tiny_data_dir, identity_render="mesh"), tiny_data_dir)


def test_training_gradients_of_the_fast_paths_match_the_plain_tensorflow_formulation(tmp_path, tiny_data_dir):
    """The step's gradients, every variable and each loss, with the warp's fused kernels and every
    fast_ops form (what training runs) against TF's own ops (warp.portable_ops, direct_formulations).

    The landmark decoder's bias is moved off the mean landmarks first, so the warp renders a real
    deformation (at the mean landmarks the flow is zero and the warp's gradients are degenerate).
    """
    from normalized_faces import fast_ops, warp

    keras.utils.set_random_seed(0)  # the same weights every run: the floor below is then reproducible
    model = _model(_tiny(tmp_path, tiny_data_dir, identity_flow_stride=2), tiny_data_dir)
    rng = np.random.default_rng(3)
    bias = model.landmark_decoder.offsets.bias
    bias.assign(rng.normal(scale=3.0, size=bias.shape).astype(np.float32))  # pixels: a few px per landmark
    batch = _batch(tiny_data_dir)

    def gradients():
        @tf.function
        def step(batch):
            with tf.GradientTape(persistent=True) as tape:
                losses = model.compute_losses(batch, training=True)
            names = ("texture_loss", "landmark_loss", "identity_loss")
            return {name: tape.gradient(losses[name], model.trainable_variables) for name in names}

        # None: a loss that does not reach the variable (the landmark loss, the texture decoder).
        variables = model.trainable_variables
        return {
            name: [np.zeros(v.shape) if g is None else g.numpy() for v, g in zip(variables, grads)]
            for name, grads in step(batch).items()
        }

    with fast_ops.every_fast_formulation():
        fast = gradients()
    with warp.portable_ops(), fast_ops.direct_formulations():
        plain = gradients()
        # How much the plain gradients themselves move when every landmark moves by 1e-4 px (about
        # float32's rounding of a position): the identity loss's gradient comes back through a deep
        # ReLU / max-pool network, where such a nudge flips units, so it moves by 5e-3 to 1e-2 of its norm
        # (measured) while the texture and landmark losses' gradients barely move.
        bias.assign_add(np.full(bias.shape, 1e-4, np.float32))
        nudged = gradients()

    def relative(a, b):
        scale = np.linalg.norm(b)
        return np.linalg.norm(a - b) / scale if scale > 0 else np.linalg.norm(a)

    for name in fast:
        floor = max(relative(n, p) for n, p in zip(nudged[name], plain[name]))
        # A wrong term (a misplaced sample, a lost scatter, a transposed gradient) moves a gradient
        # by a large part of its norm; rounding in another summation order stays near the floor.
        tolerance = max(1e-4, 5 * floor)
        differences = [relative(f, p) for f, p in zip(fast[name], plain[name])]
        print(f"{name}: fast vs plain {max(differences):.1e}; a 1e-4 px nudge {floor:.1e} (tolerance {tolerance:.1e})")
        for variable, difference in zip(model.trainable_variables, differences):
            assert difference < tolerance, f"{name} gradient of {variable.path}: relative difference {difference:.2e}"


def test_fused_adam_updates_exactly_as_keras_adam(rng):
    from normalized_faces.optim import FusedAdam

    initial = [rng.normal(size=[7, 5]).astype(np.float32), rng.normal(size=[5]).astype(np.float32)]
    gradients = [[rng.normal(size=w.shape).astype(np.float32) for w in initial] for _ in range(4)]
    results = []
    for optimizer in (keras.optimizers.Adam(0.01), FusedAdam(0.01)):
        variables = [tf.Variable(w) for w in initial]
        for step in gradients:
            optimizer.apply([tf.constant(g) for g in step], variables)
        results.append([v.numpy() for v in variables])
    # Same formula, other float32 operation order: 4 updates of ~0.01 each agree to ~1e-5 of their
    # size (a bias correction off by one step is off by several percent).
    for keras_value, fused_value, start in zip(*results, initial):
        np.testing.assert_allclose(fused_value - start, keras_value - start, rtol=1e-4, atol=1e-6)
    assert not np.allclose(results[0][0], initial[0])
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdam(amsgrad=True)


@pytest.mark.parametrize("setting, expected", [(None, "bfc"), ("false", "system")])
def test_cpu_allocator_is_bfc_unless_the_environment_says_otherwise(setting, expected):
    """Importing normalized_faces before TensorFlow allocates picks TensorFlow's BFC allocator for
    CPU tensors (README "Training": malloc remapped the step's tensors every step); an explicit
    TF_CPU_ALLOCATOR_USE_BFC wins. Each case in a fresh process: the choice is fixed at first use."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    if setting is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = setting
    script = "import tensorflow as tf\nfrom normalized_faces import train\ntf.ones([4])\nprint(train.cpu_allocator())\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == expected
