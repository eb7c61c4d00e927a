"""The frozen encoder's outputs for every record's photo, computed once and read beside the records.

The encoder never trains and records are not augmented, so encoder(record image) is the same at
every step: training reads it from this cache instead of running the encoder on the input photos
again (benchmarks/train_bench.py measures what that saves). Layout, beside the records:

  DATA/encoder_cache/<tag>/manifest.json            encoder config, weights sha256, dims, shards
  DATA/encoder_cache/<tag>/<split>-SSSSS-of-NNNNN.tfrecord   one example per record, same order

`<tag>` is a digest of the encoder's config (framing, input size, key) and of its weights file's
sha256: another encoder or other weights get another folder, never stale values. Each cached
example also holds a 64-bit fingerprint of its record's image bytes, which the reader checks
record by record (data.make_dataset), so a cache left from an older data prep run fails loudly
instead of pairing photos with the wrong features. Building is resumable shard by shard (a shard is
written to a partial file and renamed when complete).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time

import tensorflow as tf

from normalized_faces import data

CACHE_FOLDER = "encoder_cache"
MANIFEST = "manifest.json"


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_identity(encoder) -> dict:
    """What the cached values depend on: the encoder's class and config, and its weights' sha256."""
    config = {k: v for k, v in encoder.get_config().items() if k not in ("name", "trainable", "dtype", "weights_path", "cache_folder")}
    return {"class": type(encoder).__name__, "config": config, "weights_sha256": _sha256(encoder.weights_file())}


def cache_dir(data_dir, encoder, identity=None) -> pathlib.Path:
    identity = identity or encoder_identity(encoder)
    tag = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return pathlib.Path(data_dir) / CACHE_FOLDER / f"{encoder.encoder_name}-{tag}"


def _example(fingerprint, features, embedding) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "fingerprint": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(fingerprint)])),
                "features": tf.train.Feature(float_list=tf.train.FloatList(value=features)),
                "embedding": tf.train.Feature(float_list=tf.train.FloatList(value=embedding)),
            }
        )
    ).SerializeToString()


def build(data_dir, encoder, batch_size=32, report=print) -> pathlib.Path:
    """Computes (or completes) the cache for every split's records. Returns the cache folder."""
    identity = encoder_identity(encoder)
    folder = cache_dir(data_dir, encoder, identity)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    image_size = int(data.load_metadata(data_dir).get("image_size", 224))
    encode = tf.function(lambda images: encoder(images))
    shards, dims = {}, None
    started, done = time.time(), 0
    for split in data.SPLITS:
        try:
            files = data.record_files(data_dir, split)
        except FileNotFoundError:
            continue
        for record_file in files:
            target = folder / pathlib.Path(record_file).name
            if target.exists():  # finished earlier (a resumed build)
                shards[target.name] = sum(1 for _ in tf.data.TFRecordDataset(str(target)))
                continue
            partial = target.with_name(target.name + f".partial-{os.getpid()}")
            records = tf.data.TFRecordDataset(record_file).map(
                lambda serialized: data.parse_image_and_fingerprint(serialized, image_size), num_parallel_calls=tf.data.AUTOTUNE
            )
            count = 0
            with tf.io.TFRecordWriter(str(partial)) as writer:
                for images, fingerprints in records.batch(batch_size).prefetch(2):
                    outputs = encode(images)
                    features, embedding = outputs["features"].numpy(), outputs["embedding"].numpy()
                    dims = (features.shape[1], embedding.shape[1])
                    for i in range(len(fingerprints)):
                        writer.write(_example(fingerprints[i], features[i], embedding[i]))
                    count += len(fingerprints)
            os.replace(partial, target)
            shards[target.name] = count
            done += count
            report(f"encoder cache: {target.name} ({count} records; {done / (time.time() - started):.1f} records/s)")
    if dims is None:  # every shard was done before: read the dims from one
        example = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(str(next(folder.glob("*.tfrecord")))))).numpy())
        dims = (len(example.features.feature["features"].float_list.value), len(example.features.feature["embedding"].float_list.value))
    manifest = {**identity, "feature_dim": int(dims[0]), "embedding_dim": int(dims[1]), "shards": shards}
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    return folder


def load_manifest(folder) -> dict:
    path = pathlib.Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the encoder cache in {folder} is incomplete (build it with encoder_cache.build)")
    return json.loads(path.read_text())


def cached_outputs_spec(folder) -> dict:
    """The tf.io parsing spec of one cache's examples."""
    manifest = load_manifest(folder)
    return {
        "fingerprint": tf.io.FixedLenFeature([], tf.int64),
        "features": tf.io.FixedLenFeature([manifest["feature_dim"]], tf.float32),
        "embedding": tf.io.FixedLenFeature([manifest["embedding_dim"]], tf.float32),
    }


__all__ = ["build", "cache_dir", "cached_outputs_spec", "encoder_identity", "load_manifest"]
