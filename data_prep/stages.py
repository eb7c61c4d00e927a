"""The pipeline's stages as Beam DoFns and plain functions (tested directly in tests/test_data_prep.py).

Per photo (`ProcessPhoto`): read -> decode -> detect (or take the manifest's landmarks) ->
align -> filter. Per identity (`AverageIdentity`): morph-average the kept photos. Per face
(`Decompose`): texture = face warped to the global mean landmarks. Per morph (`MakeMorph`).
Every photo that does not end in an average is emitted on the `rejected` output with its reason.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import logging
import time

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from data_prep import average, filters, morph, neutralize
from normalized_faces import alignment, expressions
from normalized_faces import landmarks as lm
from normalized_faces.batch import read_photo_file
from normalized_faces.config_flags import option
from normalized_faces.photos import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, RejectedPhoto, decode_photo

log = logging.getLogger(__name__)
REJECTED = "rejected"
NAMESPACE = "data_prep"


MODES = ("morphs", "photos")


@dataclasses.dataclass(frozen=True)
class PrepConfig:
    """Every constant of data prep; the paper's values are the defaults."""

    mode: str = option(
        "morphs",
        "morphs: the paper's data, identity averages + random morphs (needs >= 3 photos a person). photos: one record "
        "per photo that passed the filters, its texture registered to the mean landmarks (Wang 2019; no identity "
        "labels needed, no averaging or morphs).",
        choices=MODES,
    )
    size: int = option(lm.ALIGNED_SIZE, "Aligned crop size in pixels (paper: 224).")
    interocular: float = option(
        lm.INTEROCULAR_DISTANCE, "Distance between the eye centres in the aligned crop (paper: 55)."
    )
    min_photos_per_identity: int = option(3, "Identities with fewer usable photos are not averaged (paper: 3).")
    detector: str = option(
        "hog",
        "dlib face detector: HOG (fast), CNN/MMOD (better on hard poses, slower), or auto (HOG, CNN where HOG finds no face).",
        choices=("hog", "cnn", "auto"),
    )
    upsample: int = option(1, "Times the detector upsamples the photo (finds smaller faces, slower).")
    multiple_faces: str = option(
        "largest", "Photos with several faces: keep the largest, or reject the photo.", choices=("largest", "reject")
    )
    min_face_interocular: float = option(
        20.0, "Reject faces whose eyes are closer than this in the photo (px): too small."
    )
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS, "Reject images whose header claims more pixels (decompression-bomb guard)."
    )
    min_side: int = option(DEFAULT_MIN_SIDE, "Reject images smaller than this on a side (px).")
    thresholds: filters.FilterThresholds = filters.FilterThresholds()
    neutralize_with: str | None = option(
        None,
        "A flow VAE export (a --method=fvae run, exported): photos rejected only for smiling or an open mouth are "
        "edited towards neutral and kept if they then pass every filter (data_prep/neutralize.py). Default: dropped.",
        kind=str,
    )
    neutralize_max_head_shift: float = option(
        neutralize.MAX_HEAD_SHIFT,
        "--neutralize_with: reject an edit whose head-bound landmarks (upper jaw, nose, eyes), found again on the "
        "edited crop, lie further than this from the photo's (mean, px at the crop size; reason neutralize_moved_head): "
        "an edit towards neutral moves the mouth, not the head, and one that folds the face can still pass the filters.",
    )
    neutralize_strength: float = option(
        1.0,
        "--neutralize_with: how far each edit goes (the flow VAE's step from the photo's expression to neutral, "
        "scaled; 1: the whole step, above 1 exaggerates it). On LFW 2 passes more photos through the filters, but "
        "many still smile to the eye (README, Expression editing).",
    )
    apply_filters: bool = option(
        True, "Apply the frontal/neutral/sharp/colour/eyeglasses filters (stage 4).", flag="filters"
    )
    num_morphs: int = option(
        1_000_000, "Random morphs to make (paper: 1,000,000); split between train and validation by size."
    )
    neighbours: int = option(200, "A morph's partner is one of the seed's k nearest faces (paper: 200).")
    neighbour_texture_mix: float = option(
        0.5,
        "How 'nearest' is measured for --neighbours: 0 = landmarks only, 1 = texture only (not stated in the paper).",
    )
    composite_blur: float = option(
        4.0, "Gaussian sigma (px) softening the compositing mask (the mean landmarks' hull)."
    )
    validation_fraction: float = option(0.1, "Share of identities held out for validation.")
    seed: int = option(0, "Seed of the morph plan: the same seed and inputs give the same records.")


@dataclasses.dataclass
class AlignedPhoto:
    path: str
    identity: str
    image: np.ndarray | None  # [S, S, 3] uint8; None once staged (StagePhoto): read it with load_staged_photo
    landmarks: np.ndarray  # [68, 2]
    neutralized: bool = False  # edited towards neutral (--neutralize_with) before it passed the filters


@dataclasses.dataclass
class Face:
    """An averaged identity, a photo (photos mode) or a morph, decomposed (texture filled in by
    DecomposeStaged / MakeMorph). Until decomposed, averages and photos travel without pixels:
    `image` is None and `staged_key` names their staged image (PHOTO_STAGING_FOLDER)."""

    key: str
    identity: str
    kind: str
    image: np.ndarray | None
    landmarks: np.ndarray
    parents: list
    split: str = ""
    texture: np.ndarray | None = None
    staged_key: str = ""


def rejection(path, identity, stage, reason, detail="", **values) -> dict:
    return {"path": path, "identity": identity, "stage": stage, "reason": reason, "detail": detail, **values}


def split_of(identity: str, validation_fraction: float) -> str:
    """Train or validation, by a stable hash of the identity: no identity is in both."""
    bucket = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "little") / 2**32
    return "validation" if bucket < validation_fraction else "train"


def _count(name):
    Metrics.counter(NAMESPACE, name).inc()


# Per-stage CPU time (milliseconds per item, as Beam distributions): job.stage_speeds turns them
# into items per second per worker, which the summary prints beside the job's wall-clock time.
STAGE_TIMERS = (
    "read_decode",
    "detect",
    "align_filter",
    "neutralize",
    "average",
    "decompose",
    "stage_face",
    "morph",
    "serialize",
)


class _Timer:
    def __init__(self, name):
        self.distribution = Metrics.distribution(NAMESPACE, f"ms_{name}")

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.distribution.update(int(round(1000 * (time.perf_counter() - self.start))))


def timed(name):
    """with timed("detect"): ... records the block's milliseconds under one of STAGE_TIMERS."""
    return _Timer(name)


class ProcessPhoto(beam.DoFn):
    """Stages 1-4 for one photo: (identity, AlignedPhoto) on the main output, or a rejection."""

    def __init__(self, config: PrepConfig):
        self.config = config
        self._detector = None
        self._neutralizer = None
        self._seen = 0

    def setup(self):
        # Heavy resources once per worker: dlib's detector and 68-point model (~1 s, ~100 MB).
        from normalized_faces.detection import FaceDetector

        self._detector = FaceDetector(self.config.detector, self.config.upsample)
        if self.config.neutralize_with:  # the flow VAE's SavedModel, once per worker
            self._neutralizer = neutralize.Neutralizer(self.config.neutralize_with, self.config.neutralize_strength)

    def _detect(self, image):
        return self._detector(image)

    def process(self, photo):
        self._seen += 1
        if self._seen % 100 == 0:
            log.info("processed %d photos on this worker", self._seen)
        _count("photos_read")
        try:
            aligned = self.process_one(photo)
        except RejectedPhoto as rejected:
            _count(f"rejected_{rejected.reason}")
            yield beam.pvalue.TaggedOutput(
                REJECTED,
                rejection(
                    photo.path,
                    photo.identity,
                    rejected.values.pop("stage", "photo"),
                    rejected.reason,
                    rejected.detail,
                    **rejected.values,
                ),
            )
            return
        except Exception as error:  # noqa: BLE001 - one bad photo must never stop the job
            log.exception("unexpected failure on %s", photo.path)
            _count("rejected_error")
            yield beam.pvalue.TaggedOutput(
                REJECTED, rejection(photo.path, photo.identity, "photo", "error", f"{type(error).__name__}: {error}")
            )
            return
        _count("photos_kept")
        yield photo.identity, aligned

    def process_one(self, photo) -> AlignedPhoto:
        """Read, decode, locate, align and filter one photo; raises RejectedPhoto."""
        config = self.config
        with timed("read_decode"):
            if "://" not in photo.path:  # a local path: only regular files (a FIFO would block the worker)
                try:
                    data = read_photo_file(photo.path)
                except RejectedPhoto as rejected:
                    rejected.values["stage"] = "read"
                    raise
            else:
                try:
                    with FileSystems.open(photo.path) as file:
                        data = file.read()
                except Exception as error:  # noqa: BLE001
                    raise RejectedPhoto("unreadable", f"{type(error).__name__}: {error}", stage="read") from None
            try:
                image = decode_photo(data, config.max_pixels, config.min_side)
            except RejectedPhoto as rejected:
                rejected.values["stage"] = "decode"
                raise
        if photo.landmarks is not None:
            points = np.asarray(photo.landmarks, np.float64).reshape(lm.NUM_LANDMARKS, 2)
        else:
            with timed("detect"):
                faces = self._detect(image)
            if not faces:
                raise RejectedPhoto("no_face", f"{config.detector} detector found no face", stage="detect")
            if len(faces) > 1:
                _count("several_faces")
                if config.multiple_faces == "reject":
                    raise RejectedPhoto("several_faces", f"{len(faces)} faces", stage="detect", faces=len(faces))
            points = faces[0].landmarks
        right, left = lm.eye_centers(points)
        interocular = float(np.linalg.norm(left - right))
        if interocular < config.min_face_interocular:
            raise RejectedPhoto(
                "face_too_small",
                f"eyes {interocular:.1f} px apart",
                stage="detect",
                value=interocular,
                threshold=config.min_face_interocular,
            )
        with timed("align_filter"):
            return self._align_and_filter(photo, image, points)

    def _align_and_filter(self, photo, image, points) -> AlignedPhoto:
        config = self.config
        aligned = alignment.align_face(image, points, config.size, config.interocular)
        after = ""  # " after neutralizing" when the photo was edited before it was judged again
        if config.apply_filters:
            measures = filters.measure(aligned.image, aligned.landmarks, source=(image, points))
            failure = filters.first_failure(measures, config.thresholds)
            if failure and failure[0] in neutralize.EXPRESSION_REASONS and self._neutralizer is not None:
                failure = filters.first_failure(measures, neutralize.without_expression_filters(config.thresholds))
                if failure is None:  # only the expression failed: edit it towards neutral, then judge again
                    aligned, failure = self._neutralize(aligned, measures)
                    after = " after neutralizing"
            if failure:
                reason, value, threshold = failure
                raise RejectedPhoto(
                    reason,
                    f"{value:.3f} vs threshold {threshold:g}{after}",
                    stage="filter",
                    value=value,
                    threshold=threshold,
                )
        return AlignedPhoto(photo.path, photo.identity, aligned.image, aligned.landmarks, neutralized=bool(after))

    def _neutralize(self, aligned, measures):
        """The aligned face edited towards neutral, its landmarks found again on the edit; returns
        (aligned, the first filter it now fails or None). Blur, colour and glasses are measured
        before the edit (a flow does not change them); pose and expressions from the new landmarks.
        Raises RejectedPhoto when no face is found on the edit, or the edit moved the head."""
        with timed("neutralize"):
            edited = self._neutralizer(aligned.image, aligned.landmarks)
            faces = self._detect(edited)
        if not faces:
            raise RejectedPhoto("no_face", "no face found on the crop after neutralizing", stage="filter")
        points = faces[0].landmarks
        head_shift = lm.pose_distance(np.asarray(aligned.landmarks), np.asarray(points))
        if head_shift > self.config.neutralize_max_head_shift:
            raise RejectedPhoto(
                "neutralize_moved_head",
                f"the edit moved the head {head_shift:.2f} px vs threshold {self.config.neutralize_max_head_shift:g}",
                stage="filter",
                value=head_shift,
                threshold=self.config.neutralize_max_head_shift,
            )
        yaw, pitch = filters.head_pose(points, edited.shape[0])
        measures = {
            **measures,
            "yaw": yaw,
            "pitch": pitch,
            "mouth_open": expressions.mouth_open(points),
            "smile": expressions.smile(points),
            "eye_open": filters.eye_openness(points),
        }
        failure = filters.first_failure(measures, self.config.thresholds)
        return dataclasses.replace(aligned, image=edited, landmarks=points), failure


class AverageIdentity(beam.DoFn):
    """Stage 5: one averaged Face per identity with enough photos; the others' photos rejected.
    Its photos are read from `staging_dir` (StagePhoto wrote them); so is its average written."""

    def __init__(self, config: PrepConfig, staging_dir: str):
        self.config = config
        self.staging_dir = staging_dir

    def process(self, element):
        identity, photos = element
        photos = sorted(photos, key=lambda p: p.path)  # order-independent, hence reproducible
        if len(photos) < self.config.min_photos_per_identity:
            for photo in photos:
                _count("rejected_too_few_photos")
                yield beam.pvalue.TaggedOutput(
                    REJECTED,
                    rejection(
                        photo.path,
                        identity,
                        "average",
                        "too_few_photos",
                        f"{identity} has {len(photos)} usable photos, fewer than {self.config.min_photos_per_identity}",
                        value=len(photos),
                        threshold=self.config.min_photos_per_identity,
                    ),
                )
            return
        with timed("average"):
            photos = [dataclasses.replace(p, image=load_staged_photo(self.staging_dir, p.path)) for p in photos]
            image, mean = average_photos(photos)
            staged_key = f"average/{identity}"  # photo keys are paths: no clash
            write_staged_photo(self.staging_dir, staged_key, image)
        _count("identities_averaged")
        split = split_of(identity, self.config.validation_fraction)
        yield Face(identity, identity, "average", None, mean, [p.path for p in photos], split, staged_key=staged_key)


def average_photos(photos):
    return average.average_identity(np.stack([p.image for p in photos]), np.stack([p.landmarks for p in photos]))


class MeanLandmarks(beam.CombineFn):
    """Stage 6a: the global mean of the averages' landmarks ([68, 2]; None when there are none)."""

    def create_accumulator(self):
        return np.zeros([lm.NUM_LANDMARKS, 2]), 0

    def add_input(self, accumulator, landmarks):
        total, count = accumulator
        return total + np.asarray(landmarks, np.float64), count + 1

    def merge_accumulators(self, accumulators):
        totals, counts = zip(*accumulators)
        return sum(totals), sum(counts)

    def extract_output(self, accumulator):
        total, count = accumulator
        return (total / count).tolist() if count else None


def photo_as_face(element, validation_fraction: float) -> Face:
    """Photos mode: a kept, staged (identity, AlignedPhoto) as a Face of kind "photo", keyed by its path."""
    identity, photo = element
    split = split_of(identity, validation_fraction)
    return Face(photo.path, identity, "photo", None, photo.landmarks, [photo.path], split, staged_key=photo.path)


# Aligned photos and averages are staged too, for the same reason: between ProcessPhoto and the
# stages that need them (averaging waits for all of an identity's photos; decomposition waits for
# the global mean landmarks) they would be materialized by the runner. Carrying the crops through
# that boundary, photos mode on 12,687 LFW photos wrote 9,177 records of 12,622 accepted on the
# default engine (the job's books caught it); staged, the elements are a few numbers.
PHOTO_STAGING_FOLDER = "_staging_photos"


def write_staged_photo(staging_dir: str, key: str, image: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, image=image)
    with FileSystems.create(staged_face_path(staging_dir, key)) as file:
        file.write(buffer.getvalue())


def load_staged_photo(staging_dir: str, key: str) -> np.ndarray:
    with FileSystems.open(staged_face_path(staging_dir, key)) as file:
        return np.load(io.BytesIO(file.read()))["image"]


class StagePhoto(beam.DoFn):
    """Right after ProcessPhoto (fused with it): writes the aligned crop to `staging_dir` and emits
    (identity, AlignedPhoto without its pixels)."""

    def __init__(self, staging_dir: str):
        self.staging_dir = staging_dir

    def process(self, element):
        identity, photo = element
        with timed("stage_face"):
            write_staged_photo(self.staging_dir, photo.path, photo.image)
        yield identity, dataclasses.replace(photo, image=None)


class DecomposeStaged(beam.DoFn):
    """Stage 6b for a staged average or photo: its image read back, its texture (the image warped
    to the mean landmarks, a side input) filled in."""

    def __init__(self, staging_dir: str):
        self.staging_dir = staging_dir

    def process(self, face: Face, mean_landmarks):
        with timed("decompose"):
            face = dataclasses.replace(face, image=load_staged_photo(self.staging_dir, face.staged_key))
            face = decompose(face, mean_landmarks)
        yield face


def decompose(face: Face, mean_landmarks) -> Face:
    """Stage 6b: fill in the texture (the face warped to the mean landmarks)."""
    face.texture = average.texture_of(face.image, face.landmarks, np.asarray(mean_landmarks))
    _count(f"{face.kind}_faces")
    return face


# Morphs read their two parents from files, not from the pipeline. Carrying whole faces to each
# morph through joins made every morph element ~1 MB and, on FnApiRunner (the local default),
# materialized them all in the runner's memory between stages: 40,000 morphs were OOM-killed at
# 16.5 GB, and at 6,000 a varying share of the morphs never reached the writer. Beam's own advice
# ("store large blobs in external storage systems, and use PCollections to pass their metadata")
# is what this does: a morph's element is its plan (a few numbers) until it is a serialized record.
STAGING_FOLDER = "_staging_faces"


def staged_face_path(staging_dir: str, key: str) -> str:
    """Where a decomposed face is staged: a hash of its key, so any identity name is a safe file name."""
    return FileSystems.join(staging_dir, hashlib.sha256(key.encode()).hexdigest()[:32] + ".npz")


class StageFace(beam.DoFn):
    """Writes a decomposed face's texture and landmarks for MakeMorph, then emits its descriptor
    entry (split, (key, landmark part, texture part)) for planning. Planning groups these, so every
    face is on disk before any morph is planned, hence before any morph reads it."""

    def __init__(self, staging_dir: str):
        self.staging_dir = staging_dir

    def process(self, face: Face):
        with timed("stage_face"):
            entry = self._stage(face)
        yield entry  # outside the timer: a yield runs the fused stages downstream

    def _stage(self, face: Face):
        buffer = io.BytesIO()
        np.savez(
            buffer,
            texture=face.texture,
            landmarks=np.asarray(face.landmarks, np.float64),
            identity=face.identity,
            split=face.split,
        )
        with FileSystems.create(staged_face_path(self.staging_dir, face.key)) as file:
            file.write(buffer.getvalue())
        landmark_part, texture_part = morph.face_descriptor(face.texture, face.landmarks)
        return face.split, (face.key, landmark_part, texture_part)


@dataclasses.dataclass(frozen=True)
class Record:
    """A serialized FaceRecord with what the job counts and samples it by."""

    split: str
    kind: str
    key: str
    data: bytes


def to_record(face: Face) -> Record:
    from normalized_faces.data import FaceRecord, serialize_record

    return Record(
        face.split,
        face.kind,
        face.key,
        serialize_record(FaceRecord(face.image, face.texture, face.landmarks, face.identity, face.kind, face.parents)),
    )


class MakeMorph(beam.DoFn):
    """Stage 7: one morph (as a serialized Record) from its plan; parents read from the staged faces."""

    CACHED_PARENTS = 64  # ~150 KB each: a bounded cache, whatever the dataset's size

    def __init__(self, config: PrepConfig, staging_dir: str):
        self.config = config
        self.staging_dir = staging_dir

    def setup(self):
        self._parents = collections.OrderedDict()

    def _parent(self, key):
        if key in self._parents:
            self._parents.move_to_end(key)
            return self._parents[key]
        path = staged_face_path(self.staging_dir, key)
        with FileSystems.open(path) as file:
            staged = np.load(io.BytesIO(file.read()))
            parent = (staged["texture"], staged["landmarks"], str(staged["identity"]), str(staged["split"]))
        self._parents[key] = parent
        if len(self._parents) > self.CACHED_PARENTS:
            self._parents.popitem(last=False)
        return parent

    def process(self, plan, mean_landmarks):
        with timed("morph"):
            face = self._make(plan, mean_landmarks)
        with timed("serialize"):
            record = to_record(face)
        yield record

    def _make(self, plan, mean_landmarks) -> Face:
        seed_texture, seed_landmarks, seed_identity, split = self._parent(plan.seed)
        target_texture, target_landmarks, target_identity, _ = self._parent(plan.target)
        compositor = morph.compositor_for(np.asarray(mean_landmarks), self.config.size, self.config.composite_blur)
        image, texture, points = morph.make_morph(
            plan,
            (seed_texture, seed_landmarks),
            (target_texture, target_landmarks),
            np.asarray(mean_landmarks),
            compositor,
        )
        _count("morphs")
        return Face(
            f"morph-{split}-{plan.morph_id:08d}",
            seed_identity,
            "morph",
            image,
            points,
            [seed_identity, target_identity],
            split,
            texture,
        )


def plan_split_morphs(element, total_faces, config: PrepConfig):
    """Plans one split's share of the morphs, neighbours drawn from that split only."""
    split, entries = element
    entries = sorted(entries, key=lambda e: e[0])
    if not entries or not total_faces:
        return []
    if len(entries) < 2:  # the summary says so too (job.morph_shortfall)
        log.warning("no morphs planned in %s: it has %d face, and a morph needs two", split, len(entries))
    # The validation split gets its rounded share and train the rest, so the shares add up exactly.
    validation_share = int(
        round(config.num_morphs * (len(entries) if split == "validation" else total_faces - len(entries)) / total_faces)
    )
    share = validation_share if split == "validation" else config.num_morphs - validation_share
    keys = [key for key, _, _ in entries]
    descriptors = morph.descriptor_matrix(
        [points for _, points, _ in entries], [thumbnail for _, _, thumbnail in entries], config.neighbour_texture_mix
    )
    seed = int.from_bytes(hashlib.sha256(f"{config.seed}/{split}".encode()).digest()[:4], "little")
    return morph.plan_morphs(keys, descriptors, share, config.neighbours, seed)
