"""The training records: one feature spec shared by data prep's writer and training's tf.data reader.

A record is one face decomposed as the paper does: the image, its 68 landmarks, and its texture
(the image warped from its landmarks to the dataset's global mean landmarks).

  image      PNG bytes, [S, S, 3] uint8 RGB (S = 224: the aligned crop)
  texture    PNG bytes, [S, S, 3] uint8 RGB, registered to the mean landmarks
  landmarks  136 floats: 68 (x, y) pixel coordinates in the image
  identity   bytes: the identity (morphs: the seed's)
  kind       bytes: b"average" (an identity's morph-average), b"morph" (a random morph), or b"photo"
             (one filtered photo: data prep's photos mode, for methods that need no identity labels)
  parents    bytes list: an average's member photos, a morph's two parent identities
  size       int64: S

`metadata.json` beside the records holds the mean landmarks and everything else about the set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib

import numpy as np
import tensorflow as tf

from normalized_faces.landmarks import NUM_LANDMARKS

KINDS = ("average", "morph", "photo")
RECORD_FIELDS = ("image", "texture", "landmarks", "identity", "kind", "parents")  # what parse_record returns by default
TRAINING_KEYS = ("image", "texture", "landmarks")  # what a training step reads (strings do not distribute)
SPLITS = ("train", "validation")
METADATA_FILE = "metadata.json"

FEATURE_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "texture": tf.io.FixedLenFeature([], tf.string),
    "landmarks": tf.io.FixedLenFeature([NUM_LANDMARKS * 2], tf.float32),
    "identity": tf.io.FixedLenFeature([], tf.string),
    "kind": tf.io.FixedLenFeature([], tf.string),
    "parents": tf.io.VarLenFeature(tf.string),
    "size": tf.io.FixedLenFeature([], tf.int64),
}


@dataclasses.dataclass
class FaceRecord:
    """One record, in numpy form (what data prep produces and `decode_record` returns)."""

    image: np.ndarray  # [S, S, 3] uint8
    texture: np.ndarray  # [S, S, 3] uint8
    landmarks: np.ndarray  # [68, 2] float (x, y)
    identity: str
    kind: str
    parents: list


def _png(image: np.ndarray) -> bytes:
    import cv2

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"record images must be [S, S, 3] uint8, got {image.dtype} {image.shape}")
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return encoded.tobytes()


def serialize_record(record: FaceRecord) -> bytes:
    """FaceRecord -> serialized tf.train.Example (the writer's half of the spec)."""
    if record.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {record.kind!r}")
    landmarks = np.asarray(record.landmarks, np.float32)
    if landmarks.shape != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [{NUM_LANDMARKS}, 2], got {landmarks.shape}")
    size = record.image.shape[0]
    if record.texture.shape != record.image.shape or record.image.shape[:2] != (size, size):
        raise ValueError(
            f"image and texture must be the same square size, got {record.image.shape} and {record.texture.shape}"
        )

    def bytes_feature(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": bytes_feature([_png(record.image)]),
                "texture": bytes_feature([_png(record.texture)]),
                "landmarks": tf.train.Feature(float_list=tf.train.FloatList(value=landmarks.reshape(-1))),
                "identity": bytes_feature([record.identity.encode()]),
                "kind": bytes_feature([record.kind.encode()]),
                "parents": bytes_feature([p.encode() for p in record.parents]),
                "size": tf.train.Feature(int64_list=tf.train.Int64List(value=[size])),
            }
        )
    )
    return example.SerializeToString()


def parse_record(serialized, image_size=224, keys=None):
    """Serialized example(s) -> dict of tensors (the reader's half of the spec; works in tf.data).

    Returns (for one example): image and texture [S, S, 3] float32 in [0, 1], landmarks [68, 2],
    identity, kind (strings), parents (1-D string tensor); with `keys`, only those (a PNG that is
    not asked for is not decoded: training from the encoder cache never needs the photo's pixels).
    """
    features = tf.io.parse_single_example(serialized, FEATURE_SPEC)

    def decode(png):
        image = tf.io.decode_png(png, channels=3)
        image = tf.ensure_shape(image, [image_size, image_size, 3])
        return tf.image.convert_image_dtype(image, tf.float32)

    fields = {
        "image": lambda: decode(features["image"]),
        "texture": lambda: decode(features["texture"]),
        "landmarks": lambda: tf.reshape(features["landmarks"], [NUM_LANDMARKS, 2]),
        "identity": lambda: features["identity"],
        "kind": lambda: features["kind"],
        "parents": lambda: tf.sparse.to_dense(features["parents"]),
        # Not a stored field: ties a cached encoder output to its record (encoder_cache.py).
        "image_fingerprint": lambda: image_fingerprint(features["image"]),
    }
    wanted = RECORD_FIELDS if keys is None else keys
    return {name: make() for name, make in fields.items() if name in wanted}


class RecordFileError(ValueError):
    """A TFRecord shard that cannot be read: the message names the file, the record and what to do."""


# What tf.data raises on a damaged shard ("corrupted record at N", a truncated file) and on a record
# whose fields do not decode as the spec says (a texture of the wrong shape, not a PNG).
RECORD_READ_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)


def find_bad_record(files, image_size=224):
    """The first record of `files` that does not read or parse: (file, index, reason), else None.
    Reads and decodes every record, file by file: for diagnosis after a read error, not for training."""
    for file in files:
        index = 0
        try:
            for serialized in tf.data.TFRecordDataset(str(file)):
                parse_record(serialized, image_size)
                index += 1
        except RECORD_READ_ERRORS as error:
            return str(file), index, " ".join(error.message.split())[:200]
    return None


def bad_record_error(file, index, reason) -> RecordFileError:
    return RecordFileError(
        f"{file}: record {index} cannot be read ({reason}): the shard is damaged or was not written by data prep; "
        f"run data prep again into {pathlib.Path(file).parent} (python -m data_prep.pipeline)"
    )


@contextlib.contextmanager
def naming_bad_records(files, image_size=224):
    """Inside it, a tf.data read error becomes a RecordFileError naming the damaged shard and record
    (found by reading `files` again, one by one); an error no record of `files` explains passes unchanged."""
    try:
        yield
    except RECORD_READ_ERRORS as error:
        logging.warning(
            "reading the %d record files again to find the damaged one (%s)", len(files), error.message[:120]
        )
        found = find_bad_record(files, image_size)
        if found is None:
            raise
        raise bad_record_error(*found) from None


def dataset_files(data_dir) -> list:
    """Every split's record files in a data prep folder (none for a split that has none)."""
    return sorted(str(p) for split in SPLITS for p in pathlib.Path(data_dir).glob(f"{split}-*.tfrecord"))


def image_fingerprint(png):
    """A 64-bit fingerprint (int64 scalar) of a record's image bytes: what ties a cached encoder output to its record."""
    return tf.bitcast(tf.reshape(tf.fingerprint(tf.reshape(png, [1])), [8]), tf.int64)


def decode_record(serialized: bytes) -> FaceRecord:
    """A serialized example -> FaceRecord (numpy; for tools and tests)."""
    parsed = parse_record(serialized, image_size=tf.io.parse_single_example(serialized, FEATURE_SPEC)["size"])
    to_uint8 = lambda t: np.round(t.numpy() * 255).astype(np.uint8)  # noqa: E731
    return FaceRecord(
        image=to_uint8(parsed["image"]),
        texture=to_uint8(parsed["texture"]),
        landmarks=parsed["landmarks"].numpy().astype(np.float64),
        identity=parsed["identity"].numpy().decode(),
        kind=parsed["kind"].numpy().decode(),
        parents=[p.decode() for p in parsed["parents"].numpy()],
    )


def record_files(data_dir, split: str) -> list:
    """The TFRecord shards of one split in a data prep output folder."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = sorted(str(p) for p in pathlib.Path(data_dir).glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(
            f"no {split}-*.tfrecord files in {data_dir}: run data prep (python -m data_prep.pipeline) first"
        )
    return files


def load_metadata(data_dir) -> dict:
    path = pathlib.Path(data_dir) / METADATA_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {data_dir} is not a data prep output folder")
    return json.loads(path.read_text())


def mean_landmarks(data_dir) -> np.ndarray:
    """[68, 2] global mean landmarks of a prepared dataset (the textures' reference shape)."""
    return np.asarray(load_metadata(data_dir)["mean_landmarks"], np.float32)


def mean_face(data_dir, split="train", limit=2000, image_size=None) -> np.ndarray:
    """The dataset's mean face: [S, S, 3] uint8, the mean of up to `limit` textures of a split.

    Textures are registered to the mean landmarks, so their pixel mean is the average face in the
    average shape: what a model that ignores identity would output. Evaluation's baseline.
    """
    total, count = None, 0
    dataset = make_dataset(data_dir, split, batch_size=64, image_size=image_size, keys=("texture",))
    size = image_size or int(load_metadata(data_dir).get("image_size", 224))
    with naming_bad_records(record_files(data_dir, split), size):
        for record in dataset:
            textures = record["texture"].numpy().astype(np.float64)[: limit - count]
            total = textures.sum(0) if total is None else total + textures.sum(0)
            count += len(textures)
            if count >= limit:
                break
    if not count:
        raise ValueError(f"no {split} records in {data_dir} to average")
    return np.clip(np.round(total / count * 255.0), 0, 255).astype(np.uint8)


def make_dataset(
    data_dir,
    split="train",
    batch_size=None,
    shuffle_buffer=0,
    repeat=False,
    seed=None,
    image_size=None,
    with_parents=False,
    keys=None,
    encoder_cache=None,
):
    """tf.data pipeline over a split's records: dicts as `parse_record` returns, optionally batched.

    Shards are interleaved so several files are read at once; with shuffle_buffer > 0 records are
    shuffled (files and records) with `seed`. `parents` (variable length) is left out unless
    with_parents, and then only unbatched. `keys` keeps only those fields (e.g. TRAINING_KEYS).
    `encoder_cache` (a folder from encoder_cache.build) adds each record's cached encoder outputs,
    "features" [F] and "embedding" [E], read in lockstep with the records; a record whose image
    fingerprint differs from its cached one stops the pipeline with an error naming the cache.
    """
    if with_parents and batch_size:
        raise ValueError("parents have variable length: with_parents needs batch_size=None")
    files = record_files(data_dir, split)
    if image_size is None:
        image_size = int(load_metadata(data_dir).get("image_size", 224))
    if encoder_cache is None:
        dataset = tf.data.Dataset.from_tensor_slices(files)
        read = tf.data.TFRecordDataset
    else:
        from normalized_faces import encoder_cache as caches

        cache_spec = caches.cached_outputs_spec(encoder_cache)
        cached = [str(pathlib.Path(encoder_cache) / pathlib.Path(f).name) for f in files]
        missing = [c for c in cached if not pathlib.Path(c).exists()]
        if missing:
            raise FileNotFoundError(
                f"encoder cache {encoder_cache} lacks {missing[0]}: it was built for other records; delete it to rebuild"
            )
        dataset = tf.data.Dataset.from_tensor_slices((files, cached))

        def read(record_file, cache_file):
            return tf.data.Dataset.zip((tf.data.TFRecordDataset(record_file), tf.data.TFRecordDataset(cache_file)))

    if shuffle_buffer:
        dataset = dataset.shuffle(len(files), seed=seed)
    dataset = dataset.interleave(read, cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if repeat:
        dataset = dataset.repeat()

    def parse(serialized, cached=None):
        wanted = None if keys is None else [k for k in keys if k not in ("features", "embedding")]
        if cached is not None:
            wanted = list(RECORD_FIELDS if wanted is None else wanted) + ["image_fingerprint"]
        record = parse_record(serialized, image_size, wanted)
        if not with_parents:
            record.pop("parents", None)
        if cached is not None:
            outputs = tf.io.parse_single_example(cached, cache_spec)
            check = tf.debugging.assert_equal(
                record.pop("image_fingerprint"),
                outputs["fingerprint"],
                message=f"encoder cache {encoder_cache} does not match these records "
                "(stale: made for another data prep run); delete it to rebuild",
            )
            with tf.control_dependencies([check]):
                record["features"] = tf.identity(outputs["features"])
                record["embedding"] = tf.identity(outputs["embedding"])
        return {k: record[k] for k in keys} if keys else record

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if batch_size:
        dataset = dataset.batch(batch_size, drop_remainder=repeat)
    return dataset.prefetch(tf.data.AUTOTUNE)
