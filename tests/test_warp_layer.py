"""The SparseImageWarp Keras layer: config, tf.function, XLA, tf.distribute, SavedModel in a fresh process."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from normalized_faces import landmarks, warp


def _inputs(rng, batch=2, size=64):
    image = rng.uniform(size=[batch, size, size, 3]).astype(np.float32)
    source = (landmarks.random_face_landmarks(rng, batch) * size / 224.0).astype(np.float32)
    dest = (landmarks.random_face_landmarks(rng, batch) * size / 224.0).astype(np.float32)
    return image, source, dest


def _model(layer, size=64):
    image = keras.Input([size, size, 3], name="image")
    source = keras.Input([68, 2], name="source_points")
    dest = keras.Input([68, 2], name="dest_points")
    return keras.Model([image, source, dest], layer(image, source, dest))


def test_config_round_trip_and_registration():
    layer = warp.SparseImageWarp(
        order=2, regularization_weight=0.1, num_boundary_points=2, flow_stride=4, spline_dtype="float32", name="w"
    )
    config = layer.get_config()
    clone = warp.SparseImageWarp.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "normalized_faces>SparseImageWarp"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(restored, warp.SparseImageWarp) and restored.get_config() == config


def test_layer_matches_the_function_eagerly_symbolically_and_compiled(rng):
    image, source, dest = _inputs(rng)
    expected, expected_flow = warp.sparse_image_warp(image, source, dest)
    layer = warp.SparseImageWarp()
    np.testing.assert_allclose(layer(image, source, dest).numpy(), expected.numpy(), atol=1e-6)
    model = _model(layer)
    assert model.output_shape == (None, 64, 64, 3)
    # Graph mode and predict() (maybe XLA) run other float32 kernels, whose flows differ from eager by
    # up to ~2e-3 px (tests/test_warp.py), hence pixels of these unit-gradient images by ~2e-3.
    np.testing.assert_allclose(model.predict([image, source, dest], verbose=0), expected.numpy(), atol=2e-3)
    graph = tf.function(lambda *a: layer(*a))(image, source, dest)
    np.testing.assert_allclose(graph.numpy(), expected.numpy(), atol=2e-3)
    xla = tf.function(lambda *a: layer(*a), jit_compile=True)(image, source, dest)
    np.testing.assert_allclose(xla.numpy(), expected.numpy(), atol=2e-3)
    with_flow = warp.SparseImageWarp(return_flow=True)
    warped, flow = with_flow(image, source, dest)
    assert with_flow.compute_output_shape((2, 64, 64, 3)) == ((2, 64, 64, 3), (2, 64, 64, 2))
    np.testing.assert_allclose(flow.numpy(), expected_flow.numpy(), atol=1e-5)


def test_layer_trains_in_a_model_fit_step(rng):
    # A learnable offset on the destination points: gradients reach it through the warp.
    image, source, dest = _inputs(rng)
    target = warp.sparse_image_warp(image, source, dest)[0].numpy()

    class Offset(keras.layers.Layer):
        def build(self, shape):
            self.offset = self.add_weight(shape=[68, 2], initializer="zeros")

        def call(self, points):
            return points + self.offset

    inputs = [keras.Input([64, 64, 3]), keras.Input([68, 2]), keras.Input([68, 2])]
    offset = Offset()
    model = keras.Model(inputs, warp.SparseImageWarp()(inputs[0], inputs[1], offset(inputs[2])))
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mae", jit_compile=False)
    history = model.fit([image, source, source], target, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.abs(offset.offset.numpy()).max() > 0
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_layer_under_mirrored_strategy_matches_one_device(rng):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) >= 2, "conftest configures two logical CPUs"
    image, source, dest = _inputs(rng, batch=4)
    expected = warp.sparse_image_warp(image, source, dest)[0].numpy()
    strategy = tf.distribute.MirroredStrategy(devices[:2])
    with strategy.scope():
        layer = warp.SparseImageWarp()
    dataset = tf.data.Dataset.from_tensor_slices((image, source, dest)).batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def step(batch):
        return strategy.run(lambda b: layer(*b), args=(batch,))

    per_replica = strategy.experimental_local_results(step(batch))
    assert len(per_replica) == 2
    # Replicas run graph-mode float32 kernels: within ~2e-3 of eager, as in the test above.
    np.testing.assert_allclose(np.concatenate([t.numpy() for t in per_replica]), expected, atol=2e-3)


def test_saved_model_round_trip_in_a_fresh_process(rng, tmp_path):
    image, source, dest = _inputs(rng, batch=3)
    model = _model(warp.SparseImageWarp(flow_stride=2))
    expected = model.predict([image, source, dest], verbose=0)
    export_dir = tmp_path / "warp_model"
    model.export(str(export_dir), format="tf_saved_model", verbose=False)
    np.savez(tmp_path / "inputs.npz", image=image, source=source, dest=dest)
    # A fresh interpreter that never imports normalized_faces: the SavedModel must stand alone.
    script = textwrap.dedent(
        f"""
        import numpy as np, tensorflow as tf
        data = np.load({str(tmp_path / "inputs.npz")!r})
        loaded = tf.saved_model.load({str(export_dir)!r})
        # A batch size the export never saw, and the original one.
        out = loaded.serve([data["image"], data["source"], data["dest"]]).numpy()
        one = loaded.serve([data["image"][:1], data["source"][:1], data["dest"][:1]]).numpy()
        np.savez({str(tmp_path / "outputs.npz")!r}, out=out, one=one)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    outputs = np.load(tmp_path / "outputs.npz")
    # expected came through predict (maybe XLA), the reloaded graph runs without XLA: see above.
    np.testing.assert_allclose(outputs["out"], expected, atol=2e-3)
    np.testing.assert_allclose(outputs["one"], outputs["out"][:1], atol=1e-6)


def test_keras_file_round_trip(rng, tmp_path):
    image, source, dest = _inputs(rng)
    model = _model(warp.SparseImageWarp(order=2, num_boundary_points=1))
    path = tmp_path / "warp.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        restored.predict([image, source, dest], verbose=0), model.predict([image, source, dest], verbose=0), atol=1e-6
    )
