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
import tempfile
import time

import tensorflow as tf

from normalized_faces import data
from normalized_faces.checksums import sha256_of

CACHE_FOLDER = "encoder_cache"
MANIFEST = "manifest.json"


def encoder_identity(encoder) -> dict:
    """What the cached values depend on: the encoder's class and config, and its weights' sha256."""
    config = {
        k: v
        for k, v in encoder.get_config().items()
        if k not in ("name", "trainable", "dtype", "weights_path", "cache_folder")
    }
    # The compute dtype matters too: an encoder built under mixed_bfloat16 gives other values.
    policy = encoder.network.dtype_policy.name if hasattr(encoder, "network") else encoder.dtype_policy.name
    return {
        "class": type(encoder).__name__,
        "config": config,
        "policy": policy,
        "weights_sha256": sha256_of(encoder.weights_file()),
    }


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


def _cannot_write(folder: pathlib.Path) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or None if they can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            return None
    except OSError as error:
        return error.strerror or str(error)


def fallback_dir(data_dir, folder: pathlib.Path, fallback_root=None) -> pathlib.Path:
    """Where a cache goes when DATA cannot be written: under `fallback_root` (a training run's
    folder), else the user's cache folder, keyed by DATA's absolute path."""
    if fallback_root is not None:
        return pathlib.Path(fallback_root) / CACHE_FOLDER / folder.name
    root = os.environ.get("NORMALIZED_FACES_CACHE") or pathlib.Path.home() / ".cache" / "normalized_faces"
    data_key = hashlib.sha256(str(pathlib.Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return pathlib.Path(root) / CACHE_FOLDER / data_key / folder.name


def build(data_dir, encoder, batch_size=32, report=print, fallback_root=None) -> pathlib.Path:
    """Computes (or completes) the cache for every split's records. Returns the cache folder.

    A cache shard is (re)computed when it is missing or its record file's size differs from the one
    it was made from (data prep re-run, shards added); the others are kept. The cache lives beside
    the records; where DATA cannot be written (a read-only or shared dataset) and holds no complete
    cache, it is built under `fallback_root` (or the user's cache folder) instead, with a line saying so.
    """
    identity = encoder_identity(encoder)
    folder = cache_dir(data_dir, encoder, identity)
    record_sizes = {}
    for split in data.SPLITS:
        try:
            record_sizes.update(
                {pathlib.Path(f).name: (f, pathlib.Path(f).stat().st_size) for f in data.record_files(data_dir, split)}
            )
        except FileNotFoundError:
            continue
    previous, known, up_to_date = _cache_state(folder, record_sizes)
    if previous and up_to_date == set(record_sizes) and set(known) == set(record_sizes):
        return folder
    reason = _cannot_write(folder)
    if reason:
        other = fallback_dir(data_dir, folder, fallback_root)
        report(f"encoder cache: cannot write under {data_dir} ({reason}); caching in {other} instead")
        folder = other
        previous, known, up_to_date = _cache_state(folder, record_sizes)
        if previous and up_to_date == set(record_sizes) and set(known) == set(record_sizes):
            return folder
        folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    image_size = int(data.load_metadata(data_dir).get("image_size", 224))
    encode = tf.function(lambda images: encoder(images))
    shards = {name: known[name] for name in up_to_date}
    dims = (previous.get("feature_dim"), previous.get("embedding_dim")) if previous else None
    started, done = time.time(), 0
    for name, (record_file, size) in sorted(record_sizes.items()):
        if name in up_to_date:
            continue
        target = folder / name
        partial = target.with_name(target.name + f".partial-{os.getpid()}")
        records = tf.data.TFRecordDataset(record_file).map(
            lambda serialized: data.parse_record(serialized, image_size, ("image", "image_fingerprint")),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        count = 0
        with data.naming_bad_records([record_file], image_size), tf.io.TFRecordWriter(str(partial)) as writer:
            for batch in records.batch(batch_size).prefetch(2):
                outputs, fingerprints = encode(batch["image"]), batch["image_fingerprint"]
                features, embedding = outputs["features"].numpy(), outputs["embedding"].numpy()
                dims = (features.shape[1], embedding.shape[1])
                for i in range(len(fingerprints)):
                    writer.write(_example(fingerprints[i], features[i], embedding[i]))
                count += len(fingerprints)
        os.replace(partial, target)
        shards[name] = {"records": count, "record_bytes": size}
        done += count
        report(f"encoder cache: {name} ({count} records; {done / max(time.time() - started, 1e-9):.1f} records/s)")
    for stale in set(known) - set(record_sizes):  # shards whose records are gone
        (folder / stale).unlink(missing_ok=True)
    if not dims or dims[0] is None:
        raise ValueError(f"no records under {data_dir} to cache")
    manifest = {**identity, "feature_dim": int(dims[0]), "embedding_dim": int(dims[1]), "shards": shards}
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    return folder


def _cache_state(folder: pathlib.Path, record_sizes: dict):
    """(manifest or {}, its shards, the names of the shards up to date with the records)."""
    manifest_path = folder / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    known = previous.get("shards", {})
    up_to_date = {
        name
        for name, (_, size) in record_sizes.items()
        if isinstance(known.get(name), dict) and known[name].get("record_bytes") == size and (folder / name).exists()
    }
    return previous, known, up_to_date


def load_manifest(folder) -> dict:
    path = pathlib.Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the encoder cache in {folder} is incomplete (build it with encoder_cache.build)"
        )
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
