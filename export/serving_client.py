"""Requests for the exported model under TF Serving: REST (JSON, base64) and gRPC (PredictRequest).

    from export import serving_client
    body = serving_client.rest_body(["face1.png", "face2.jpg"])        # serving_default, JPEG/PNG bytes
    # curl -d @body.json http://HOST:8501/v1/models/normalized_faces:predict
    request = serving_client.grpc_request(["face1.png"], model_name="normalized_faces")
    # PredictionServiceStub(channel).Predict(request, timeout)

    python -m export.serving_client --photos a.png b.jpg > body.json   # then the curl line above

Photos must be aligned face crops (normalize-face --aligned_dir writes them; data prep's alignment).
`tensors_from_rest_body` converts a REST body to input tensors the way TF Serving's REST API does
(row format, {"b64": ...} for binary strings), so requests can be checked against the SavedModel's
signatures without a server.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys

import numpy as np

INPUT_NAME = "images"


def _read(photo) -> bytes:
    return photo if isinstance(photo, (bytes, bytearray)) else pathlib.Path(photo).read_bytes()


def rest_body(photos, signature_name="serving_default") -> str:
    """JSON for POST /v1/models/<name>:predict with JPEG/PNG bytes (paths or bytes), row format."""
    instances = [{"b64": base64.b64encode(_read(p)).decode("ascii")} for p in photos]
    return json.dumps({"signature_name": signature_name, "instances": instances})


def rest_body_from_arrays(images, signature_name="predict_images") -> str:
    """JSON for the float signature: images [B, 224, 224, 3] float in [0, 1]."""
    return json.dumps({"signature_name": signature_name, "instances": np.asarray(images, np.float32).tolist()})


def grpc_request(photos, model_name="normalized_faces", signature_name="serving_default", version=None):
    """A tensorflow_serving.apis.predict_pb2.PredictRequest carrying JPEG/PNG bytes."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto([_read(p) for p in photos], dtype=tf.string))
    return request


def tensors_from_rest_body(body: str) -> tuple[str, dict]:
    """(signature_name, {input name: numpy array}) as TF Serving's REST API decodes a row-format body."""
    request = json.loads(body)
    instances = request["instances"]

    def value(item):
        if isinstance(item, dict) and set(item) == {"b64"}:
            return base64.b64decode(item["b64"])
        return item

    if instances and isinstance(instances[0], dict) and set(instances[0]) != {"b64"}:
        names = instances[0].keys()
        columns = {name: [value(instance[name]) for instance in instances] for name in names}
    else:
        columns = {INPUT_NAME: [value(instance) for instance in instances]}
    tensors = {}
    for name, column in columns.items():
        tensors[name] = (
            np.array(column, dtype=object) if isinstance(column[0], bytes) else np.asarray(column, np.float32)
        )
    return request.get("signature_name", "serving_default"), tensors


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="Print a TF Serving REST predict body for aligned face photos.")
    parser.add_argument("--photos", nargs="+", required=True, help="JPEG/PNG files of aligned face crops")
    parser.add_argument("--signature_name", default="serving_default")
    args = parser.parse_args(argv)
    sys.stdout.write(rest_body(args.photos, args.signature_name) + "\n")


if __name__ == "__main__":
    main()
