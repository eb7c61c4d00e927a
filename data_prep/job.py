"""The data prep Beam job: build_pipeline (the graph) and run (pipeline + metadata + preview + summary).

Kept apart from `pipeline.py` (flags and main) on purpose: Beam pickles the functions a pipeline
uses, and functions of a `python -m` entry module live in `__main__`, which workers cannot import.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import platform
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from data_prep import stages
from normalized_faces import inputs

STATS_PREFIX = "_stats"
MEAN_PREFIX = "_mean_landmarks"
PREVIEW_PREFIX = "_preview"


def build_pipeline(
    pipeline: beam.Pipeline,
    photo_inputs,
    output_dir: str,
    config: stages.PrepConfig,
    num_shards: int = 4,
    preview_count: int = 8,
):
    """Adds the whole job to `pipeline`. Separate from main so tests run it on any runner."""
    join = FileSystems.join
    photos = pipeline | "Inputs" >> beam.Create(photo_inputs) | "Spread" >> beam.Reshuffle()
    processed = photos | "Photo: read, detect, align, filter" >> beam.ParDo(stages.ProcessPhoto(config)).with_outputs(
        stages.REJECTED, main="kept"
    )
    # The aligned crops go to files here; what travels on is their landmarks (stages.PHOTO_STAGING_FOLDER).
    photo_staging = join(output_dir, stages.PHOTO_STAGING_FOLDER)
    kept = processed.kept | "Stage photos" >> beam.ParDo(stages.StagePhoto(photo_staging))
    if config.mode == "photos":
        # One record per kept photo: no identity grouping, averaging or morphs.
        face_sources = kept | "Photos as faces" >> beam.Map(stages.photo_as_face, config.validation_fraction)
        later_rejections, identity_counts = [], []
    else:
        by_identity = kept | "By identity" >> beam.GroupByKey()
        averaged = by_identity | "Average identities" >> beam.ParDo(
            stages.AverageIdentity(config, photo_staging)
        ).with_outputs(stages.REJECTED, main="faces")
        face_sources = averaged.faces
        later_rejections = [averaged[stages.REJECTED]]
        identity_counts = [
            by_identity
            | "Count identities"
            >> beam.Map(
                lambda kv: ("identities_with_enough_photos", int(len(list(kv[1])) >= config.min_photos_per_identity))
            )
        ]
    mean_landmarks = (
        face_sources
        | "Landmarks" >> beam.Map(lambda f: f.landmarks)
        | "Global mean" >> beam.CombineGlobally(stages.MeanLandmarks())
    )
    mean_side = beam.pvalue.AsSingleton(mean_landmarks)
    faces = face_sources | "Decompose" >> beam.ParDo(stages.DecomposeStaged(photo_staging), mean_side)
    face_kind = "photos" if config.mode == "photos" else "averages"
    face_records = faces | f"Serialize {face_kind}" >> beam.Map(stages.to_record)
    # Photo records are written as they come (runner-chosen shards, as the morphs below): a fixed
    # shard count would first group every record. The averages (one per identity) keep it.
    outputs = [(face_kind, face_records, 0 if config.mode == "photos" else num_shards)]
    plans = morph_records = None
    if config.mode == "morphs":
        # Morphs: each face is staged to a file and planned per split on one worker (a k-d tree over
        # compact descriptors); a morph's element stays a plan until MakeMorph turns it into a record,
        # reading its two parents from the staged files (stages.STAGING_FOLDER says why).
        staging_dir = join(output_dir, stages.STAGING_FOLDER)
        total_faces = beam.pvalue.AsSingleton(faces | "Count faces" >> beam.combiners.Count.Globally())
        plans = (
            faces
            | "Stage faces" >> beam.ParDo(stages.StageFace(staging_dir))
            | "By split" >> beam.GroupByKey()
            | "Plan morphs" >> beam.FlatMap(stages.plan_split_morphs, total_faces, config)
        )
        morph_records = (
            plans
            | "Spread plans" >> beam.Reshuffle()
            | "Make morphs" >> beam.ParDo(stages.MakeMorph(config, staging_dir), mean_side)
        )
        # Morph records go from MakeMorph to the writer in one fused stage: runner-chosen sharding
        # (num_shards=0) writes each bundle as it comes, where a fixed shard count would first group
        # every record in memory.
        outputs.append(("morphs", morph_records, 0))

    for kind, collection, shards in outputs:
        by_split = collection | f"Split {kind}" >> beam.Partition(
            lambda record, _: 0 if record.split == "train" else 1, 2
        )
        for split, part in zip(("train", "validation"), by_split):
            (
                part
                | f"{kind} {split} bytes" >> beam.Map(lambda record: record.data)
                | f"Write {split} {kind}"
                >> beam.io.WriteToTFRecord(
                    join(output_dir, f"{split}-{kind}"), file_name_suffix=".tfrecord", num_shards=shards
                )
            )

    rejected = (processed[stages.REJECTED], *later_rejections) | "All rejected" >> beam.Flatten()
    (
        rejected
        | "Rejected to JSON" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
        | "Write rejected"
        >> beam.io.WriteToText(
            join(output_dir, "rejected"), file_name_suffix=".jsonl", shard_name_template="", num_shards=1
        )
    )

    # Counts taken from the data itself (not only Beam metrics, which some runners do not report).
    counts = [
        photos | "Count inputs" >> beam.Map(lambda _: ("inputs", 1)),
        face_sources | "Count accepted" >> beam.Map(lambda f: ("accepted_photos", len(f.parents))),
        processed.kept | "Count neutralized" >> beam.Map(lambda kv: ("neutralized_photos", int(kv[1].neutralized))),
        rejected | "Count rejected" >> beam.Map(lambda r: (f"rejected/{r['reason']}", 1)),
        *identity_counts,
    ]
    for kind, collection, _ in outputs:
        counts.append(collection | f"Count {kind} records" >> beam.Map(lambda r: (f"records/{r.split}/{r.kind}", 1)))
    if plans is not None:
        counts.append(plans | "Count planned morphs" >> beam.Map(lambda _: ("planned_morphs", 1)))
    counts = counts | "All counts" >> beam.Flatten()
    (
        counts
        | "Sum counts" >> beam.CombinePerKey(sum)
        | "Counts to JSON" >> beam.Map(json.dumps)
        | "Write counts"
        >> beam.io.WriteToText(
            join(output_dir, STATS_PREFIX), file_name_suffix=".jsonl", shard_name_template="", num_shards=1
        )
    )
    (
        mean_landmarks
        | "Mean to JSON" >> beam.Map(json.dumps)
        | "Write mean"
        >> beam.io.WriteToText(
            join(output_dir, MEAN_PREFIX), file_name_suffix=".json", shard_name_template="", num_shards=1
        )
    )
    for kind, collection in ((face_kind[:-1], face_records), ("morph", morph_records)):
        if collection is None:
            continue
        (
            collection
            | f"Key {kind} previews" >> beam.Map(lambda r: (r.key, r.data))
            | f"Sample {kind}s"
            >> beam.combiners.Top.Smallest(preview_count, key=lambda kv: kv[0])  # deterministic sample
            | f"Flatten {kind} previews" >> beam.FlatMap(lambda top: [data for _, data in top])
            | f"Write {kind} previews"
            >> beam.io.WriteToTFRecord(
                join(output_dir, f"{PREVIEW_PREFIX}_{kind}"),
                file_name_suffix=".tfrecord",
                shard_name_template="",
                num_shards=1,
            )
        )
    return pipeline


def _read_text(path):
    with FileSystems.open(path) as file:
        return file.read().decode()


def finish(output_dir: str, config: stages.PrepConfig, flag_values: dict, seconds: float, speeds=None) -> dict:
    """After the pipeline: metadata.json and preview.png from its small side outputs; prints the summary."""
    from data_prep import preview
    from normalized_faces.config_flags import leaf_fields
    from normalized_faces.data import METADATA_FILE

    join = FileSystems.join
    counts = dict(
        json.loads(line) for line in _read_text(join(output_dir, f"{STATS_PREFIX}.jsonl")).splitlines() if line
    )
    mean_text = _read_text(join(output_dir, f"{MEAN_PREFIX}.json")).strip()
    mean = json.loads(mean_text) if mean_text else None
    rejected = {key.split("/", 1)[1]: value for key, value in counts.items() if key.startswith("rejected/")}
    records = {key.split("/", 1)[1]: value for key, value in counts.items() if key.startswith("records/")}
    summary = {
        "identities_with_enough_photos": counts.get("identities_with_enough_photos", 0),
        "written_averages": sum(value for key, value in records.items() if key.endswith("/average")),
        "planned_morphs": counts.get("planned_morphs", 0),
        "written_morphs": sum(value for key, value in records.items() if key.endswith("/morph")),
        "written_photos": sum(value for key, value in records.items() if key.endswith("/photo")),
        "mode": config.mode,
        "inputs": counts.get("inputs", 0),
        "accepted": counts.get("accepted_photos", 0),
        "neutralized": counts.get("neutralized_photos", 0),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "records": dict(sorted(records.items())),
        "seconds": round(seconds, 1),
        "stage_speeds": speeds or {},
        "requested_morphs": config.num_morphs if config.mode == "morphs" else 0,
        "internal_errors": internal_errors(join(output_dir, "rejected.jsonl")),
    }
    import apache_beam
    import cv2
    import tensorflow as tf

    metadata = {
        "image_size": config.size,
        "interocular": config.interocular,
        "mean_landmarks": mean,
        "counts": summary,
        # The resolved PrepConfig (every field, thresholds included), then the job's own flags.
        "config": {**{field.name: value for field, value in leaf_fields(config)}, **flag_values},
        "versions": {
            "python": platform.python_version(),
            "apache_beam": apache_beam.__version__,
            "tensorflow": tf.__version__,
            "opencv": cv2.__version__,
            "dlib": __import__("dlib").__version__,
        },
        "seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with FileSystems.create(join(output_dir, METADATA_FILE)) as file:
        file.write(json.dumps(metadata, indent=2).encode())
    preview_files = [join(output_dir, f"{PREVIEW_PREFIX}_{kind}.tfrecord") for kind in ("average", "photo", "morph")]
    preview_path = preview.write_preview(output_dir, *preview_files)
    scratch = [join(output_dir, f"{STATS_PREFIX}.jsonl"), join(output_dir, f"{MEAN_PREFIX}.json"), *preview_files]
    FileSystems.delete([path for path in scratch if FileSystems.exists(path)])
    staged = [join(output_dir, folder) for folder in (stages.STAGING_FOLDER, stages.PHOTO_STAGING_FOLDER)]
    FileSystems.delete([folder for folder in staged if FileSystems.exists(folder)])
    summary["preview"] = preview_path
    check_books(summary)
    return summary


def internal_errors(rejected_path: str) -> dict:
    """The photos rejected by an exception (reason "error": a bug, not a measured filter):
    {"count", "most_common": detail, "example": path}."""
    details = {}
    example = {}
    if FileSystems.exists(rejected_path):
        for line in _read_text(rejected_path).splitlines():
            entry = json.loads(line) if line.strip() else {}
            if entry.get("reason") == "error":
                details[entry.get("detail", "")] = details.get(entry.get("detail", ""), 0) + 1
                example.setdefault(entry.get("detail", ""), entry.get("path"))
    if not details:
        return {"count": 0}
    most_common = max(details, key=details.get)
    return {"count": sum(details.values()), "most_common": most_common, "example": example[most_common]}


class LostRecords(RuntimeError):
    """The job's own books do not balance: something was lost (or made twice) on the way."""


class InternalErrors(RuntimeError):
    """Every photo the job read was lost to exceptions in its own code: the output holds nothing."""


def check_books(summary: dict) -> None:
    """Fails loudly, with the numbers, when planned != written morphs, inputs != accepted + rejected,
    or the averages written != the identities with enough photos; and when nothing was accepted
    while photos were lost to internal errors (an exception in the job, not a filter)."""
    errors = summary.get("internal_errors") or {"count": 0}
    if errors["count"] and not summary["accepted"]:
        raise InternalErrors(
            f"data prep wrote nothing: {errors['count']} of {summary['inputs']} inputs were rejected by an internal "
            f"error, not by a filter: {errors['most_common']} (e.g. {errors['example']}). This is a bug in data "
            "prep, not in the photos; rejected.jsonl has every one"
        )
    problems = []
    if summary.get("mode") == "photos" and summary.get("written_photos", 0) != summary["accepted"]:
        problems.append(
            f"accepted {summary['accepted']} photos, wrote {summary.get('written_photos', 0)} photo records"
        )
    if summary.get("identities_with_enough_photos", 0) != summary.get("written_averages", 0):
        problems.append(
            f"{summary.get('identities_with_enough_photos', 0)} identities have enough photos, "
            f"wrote {summary.get('written_averages', 0)} averages"
        )
    if summary["planned_morphs"] != summary["written_morphs"]:
        problems.append(f"planned {summary['planned_morphs']} morphs, wrote {summary['written_morphs']}")
    if summary["inputs"] != summary["accepted"] + summary["rejected"]:
        problems.append(
            f"inputs {summary['inputs']} != accepted {summary['accepted']} + rejected {summary['rejected']}"
        )
    if problems:
        raise LostRecords(
            "data prep's books do not balance: " + "; ".join(problems) + " (metadata.json has the counts)"
        )


def print_summary(summary: dict, output_dir: str, stream=sys.stdout):
    print(f"inputs {summary['inputs']} = accepted {summary['accepted']} + rejected {summary['rejected']}", file=stream)
    if summary.get("neutralized"):
        print(f"  accepted after an edit towards neutral (--neutralize_with): {summary['neutralized']}", file=stream)
    if summary.get("mode") == "photos":
        print(f"photos: accepted {summary['accepted']} = written {summary['written_photos']}", file=stream)
    else:
        print(
            f"averages: identities with enough photos {summary['identities_with_enough_photos']} = "
            f"written {summary['written_averages']}",
            file=stream,
        )
        print(f"morphs planned {summary['planned_morphs']} = written {summary['written_morphs']}", file=stream)
        if summary.get("planned_morphs", 0) < summary.get("requested_morphs", 0):
            print(f"  {morph_shortfall(summary)}", file=stream)
    errors = summary.get("internal_errors") or {"count": 0}
    if errors["count"]:
        print(
            f"  {errors['count']} photos lost to internal errors (a bug, not a filter): {errors['most_common']} "
            f"(e.g. {errors['example']})",
            file=stream,
        )
    for reason, count in summary["rejected_by_reason"].items():
        print(f"  rejected {reason}: {count}", file=stream)
    for key, count in summary["records"].items():
        print(f"  records {key}: {count}", file=stream)
    if summary.get("stage_speeds"):
        print(f"time: {summary['seconds']:.0f} s wall-clock; per stage (CPU time summed over workers):", file=stream)
        for name, speed in summary["stage_speeds"].items():
            print(
                f"  {name:<12} {speed['items']:6d} items {speed['cpu_seconds']:8.1f} s  {speed['per_second_per_worker']} /s per worker",
                file=stream,
            )
    print(
        f"wrote {output_dir}: train-*.tfrecord, validation-*.tfrecord, rejected.jsonl, metadata.json, "
        f"{pathlib.Path(summary['preview']).name}",
        file=stream,
    )


def morph_shortfall(summary: dict) -> str:
    """Why fewer morphs were planned than asked: a split needs two faces to morph between."""
    faces = {
        split: sum(
            count for key, count in summary["records"].items() if key.startswith(f"{split}/") and "morph" not in key
        )
        for split in ("train", "validation")
    }
    short = [f"{split} has {count} face{'s' if count != 1 else ''}" for split, count in faces.items() if count < 2]
    return (
        f"planned {summary['planned_morphs']} of the {summary['requested_morphs']} morphs asked for: morphs are made "
        f"between two faces of one split, and {' and '.join(short) or 'a split has too few faces'} "
        "(give more identities, or --validation_fraction=0 to keep every face in train)"
    )


LOCAL_RUNNERS = ("DirectRunner", "direct", "FnApiRunner")


def pipeline_options(beam_args) -> PipelineOptions:
    """Beam options from the leftover arguments.

    Locally (no --runner, or --runner=DirectRunner) the job runs on FnApiRunner, the engine Beam's
    DirectRunner uses for batch jobs, with one worker process per core. (Beam 2.77's DirectRunner
    would first try to download its Prism binary; going to FnApiRunner directly keeps the job
    offline.) --direct_running_mode=multi_threading or in_memory run it in this process instead.
    """
    args = [a for a in beam_args if not a.startswith("--runner=")]
    runner = next((a.split("=", 1)[1] for a in beam_args if a.startswith("--runner=")), "DirectRunner")
    if runner in LOCAL_RUNNERS:
        runner = "FnApiRunner"
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append("--direct_running_mode=multi_processing")
        if not any(a.startswith("--direct_num_workers") for a in args):
            args.append(f"--direct_num_workers={os.cpu_count() or 1}")
    return PipelineOptions(args + [f"--runner={runner}"])


def run(
    input_path: str,
    output_dir: str,
    config: stages.PrepConfig,
    beam_args=(),
    num_shards=4,
    preview_count=8,
    flag_values=None,
) -> dict:
    """Runs the whole job and returns the summary (what main prints)."""
    join = FileSystems.join
    photo_inputs = inputs.list_inputs(input_path)
    logging.info("data prep: %d inputs from %s", len(photo_inputs), input_path)
    if not FileSystems.exists(output_dir):
        FileSystems.mkdirs(output_dir)
    # Shard counts can differ between runs (morphs are sharded by bundle): records of an earlier
    # run in the same folder would be read together with this one's, so they go first.
    stale = [
        m.path
        for pattern in ("train-*.tfrecord", "validation-*.tfrecord")
        for m in FileSystems.match([join(output_dir, pattern)])[0].metadata_list
    ]
    if stale:
        logging.warning("data prep: removing %d record files of an earlier run in %s", len(stale), output_dir)
        FileSystems.delete(stale)
    start = time.time()
    pipeline = beam.Pipeline(options=pipeline_options(beam_args))
    build_pipeline(pipeline, photo_inputs, output_dir, config, num_shards, preview_count)
    result = pipeline.run()
    result.wait_until_finish()
    return finish(output_dir, config, flag_values or {}, time.time() - start, stage_speeds(result))


def stage_speeds(result) -> dict:
    """{stage: {"items", "cpu_seconds", "per_second_per_worker"}} from the stages' timers (stages.timed),
    or {} where the runner reports no distributions."""
    try:
        distributions = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(stages.NAMESPACE))[
            "distributions"
        ]
    except Exception:  # noqa: BLE001 - metrics are a report, never a reason to fail the job
        return {}
    speeds = {}
    for result_entry in distributions:
        name = result_entry.key.metric.name
        if not name.startswith("ms_"):
            continue
        value = result_entry.committed or result_entry.attempted
        entry = speeds.setdefault(name[3:], {"items": 0, "cpu_seconds": 0.0})
        entry["items"] += value.count
        entry["cpu_seconds"] += value.sum / 1000.0
    for entry in speeds.values():
        entry["per_second_per_worker"] = (
            round(entry["items"] / entry["cpu_seconds"], 2) if entry["cpu_seconds"] else None
        )
        entry["cpu_seconds"] = round(entry["cpu_seconds"], 1)
    return {name: speeds[name] for name in stages.STAGE_TIMERS if name in speeds}
