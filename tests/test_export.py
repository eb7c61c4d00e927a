"""Export for TF Serving: signatures reloaded in a fresh process, saved_model_cli, REST and gRPC requests."""

import json
import pathlib
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import tensorflow as tf

from data_prep import synthetic
from export import saved_model, serving_client
from normalized_faces import alignment, inference

SAVED_MODEL_CLI = pathlib.Path(sys.executable).parent / "saved_model_cli"


def _aligned_faces(count=3, seed=11):
    rng = np.random.default_rng(seed)
    faces = []
    for i in range(count):
        photo, points = synthetic.synthetic_photo(synthetic.random_identity(rng, str(i)), rng, size=256)
        faces.append(alignment.align_face(photo, points).image)
    return np.stack(faces)


def _png(image):
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_export_layout(exported):
    assert exported.name == "1"
    assert (exported / "saved_model.pb").exists() and (exported / "variables").is_dir()
    assert (exported / "assets.extra" / "tf_serving_warmup_requests").exists()
    metadata = json.loads((exported / "assets.extra" / "normalized_faces.json").read_text())
    assert metadata["threshold"]["value"] == 0.6 and len(metadata["mean_landmarks"]) == 68
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_export_holds_no_custom_op(exported):
    """The warp's fused kernels are this package's ops: TF Serving could not load a graph with them."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    graph = model.meta_graphs[0].graph_def
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types |= {node.op for node in function.node_def}
    assert "GatherV2" in types  # the warp is in there, composed of TF ops
    assert not [t for t in types if t.startswith("Nf")], sorted(types)


def test_signatures_in_a_fresh_process_agree_with_the_keras_model(trained_run, exported, tmp_path):
    faces = _aligned_faces()
    floats = faces.astype(np.float32) / 255.0
    model = inference.restore_training_model(trained_run)
    expected = {k: v.numpy() for k, v in inference.model_outputs(model, floats).items()}
    np.save(tmp_path / "floats.npy", floats)
    (tmp_path / "pngs.json").write_text(json.dumps([_png(f).hex() for f in faces]))
    script = textwrap.dedent(
        f"""
        import json, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(exported)!r})
        floats = np.load({str(tmp_path / "floats.npy")!r})
        pngs = [bytes.fromhex(h) for h in json.load(open({str(tmp_path / "pngs.json")!r}))]
        a = loaded.signatures["predict_images"](images=tf.constant(floats))
        b = loaded.signatures["serving_default"](images=tf.constant(pngs))
        outputs = {{"float_" + k: v.numpy() for k, v in a.items()}}
        outputs.update({{"bytes_" + k: v.numpy() for k, v in b.items()}})
        np.savez({str(tmp_path / "out.npz")!r}, **outputs)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    out = np.load(tmp_path / "out.npz")
    for prefix in ("float_", "bytes_"):
        assert out[prefix + "normalized_face"].dtype == np.uint8 and out[prefix + "normalized_face"].shape == (
            3,
            224,
            224,
            3,
        )
        # uint8 rounding can flip a level where float32 results differ in the last bit.
        assert np.abs(out[prefix + "normalized_face"].astype(int) - expected["normalized_face"]).max() <= 1
        for key in ("landmarks", "texture", "embedding"):
            np.testing.assert_allclose(out[prefix + key], expected[key], atol=1e-5, err_msg=prefix + key)


def test_saved_model_cli_lists_both_signatures(exported):
    shown = subprocess.run(
        [str(SAVED_MODEL_CLI), "show", "--dir", str(exported), "--all"], check=True, capture_output=True, text=True
    ).stdout
    for text in (
        "signature_def['serving_default']",
        "signature_def['predict_images']",
        "normalized_face",
        "landmarks",
        "embedding",
        "DT_STRING",
    ):
        assert text in shown, text


def test_rest_request_decoded_as_tf_serving_would_runs_through_the_signature(exported):
    faces = _aligned_faces(2)
    body = serving_client.rest_body([_png(f) for f in faces])
    signature_name, tensors = serving_client.tensors_from_rest_body(body)
    assert signature_name == "serving_default" and list(tensors) == ["images"]
    loaded = tf.saved_model.load(str(exported))
    result = loaded.signatures[signature_name](images=tf.constant(list(tensors["images"])))
    direct = loaded.signatures["predict_images"](images=tf.constant(faces.astype(np.float32) / 255.0))
    np.testing.assert_allclose(result["landmarks"].numpy(), direct["landmarks"].numpy(), atol=1e-5)
    float_body = serving_client.rest_body_from_arrays(faces.astype(np.float32) / 255.0)
    name, tensors = serving_client.tensors_from_rest_body(float_body)
    np.testing.assert_allclose(
        loaded.signatures[name](images=tensors["images"])["embedding"].numpy(), direct["embedding"].numpy(), atol=1e-5
    )


def test_grpc_request_and_warmup_records(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    faces = _aligned_faces(1)
    request = serving_client.grpc_request([_png(faces[0])], model_name="normalized_faces", version=1)
    assert request.model_spec.signature_name == "serving_default" and request.model_spec.version.value == 1
    loaded = tf.saved_model.load(str(exported))
    images = tf.make_ndarray(request.inputs["images"])
    assert loaded.signatures["serving_default"](images=tf.constant(list(images)))["normalized_face"].shape == (
        1,
        224,
        224,
        3,
    )
    logs = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(exported / "assets.extra" / "tf_serving_warmup_requests"))
    ]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default", "predict_images"]
    for log in logs:  # TF Serving replays these at load: they must run
        request = log.predict_log.request
        tensor = tf.make_ndarray(request.inputs["images"])
        argument = tf.constant(list(tensor)) if tensor.dtype == object else tf.constant(tensor)
        assert loaded.signatures[request.model_spec.signature_name](images=argument)["embedding"].shape[0] == 1


def test_malformed_bytes_give_a_clear_error(exported):
    loaded = tf.saved_model.load(str(exported))
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be JPEG or PNG bytes of an aligned face crop"):
        loaded.signatures["serving_default"](images=tf.constant([b"this is not an image"]))
    truncated = _png(_aligned_faces(1)[0])[:200]
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](images=tf.constant([truncated]))


def test_versions_are_numbered_and_never_half_written(trained_run, tmp_path, monkeypatch):
    first = saved_model.export(trained_run, tmp_path)
    second = saved_model.export(trained_run, tmp_path)
    assert (first.name, second.name) == ("1", "2")
    with pytest.raises(FileExistsError, match="versions are immutable"):
        saved_model.export(trained_run, tmp_path, version=2)

    def fail(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(saved_model, "write_warmup_requests", fail)
    with pytest.raises(OSError, match="injected"):
        saved_model.export(trained_run, tmp_path, version=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]  # nothing for TF Serving to load


def test_loaded_model_reads_both_kinds(trained_run, exported):
    faces = _aligned_faces(2).astype(np.float32) / 255.0
    from_run = inference.load_model(trained_run)
    from_export = inference.load_model(exported.parent)  # the base folder: the highest version is chosen
    assert (from_run.kind, from_export.kind) == ("checkpoint", "saved_model")
    a, b = from_run(faces), from_export(faces)
    np.testing.assert_allclose(a["landmarks"], b["landmarks"], atol=1e-4)
    assert from_export.threshold.value == from_run.threshold.value == 0.6
