"""One bad input costs nothing else: hostile paths, output folders, damaged files, the kernel cache
(its own tests are in test_warp_kernels.py), on real photos, real shards and real SavedModels.

Every command given a mix of good inputs and bad ones must write every good input under a name no
other input shares, give each bad one a line (path and reason), let no traceback reach the user,
and say through its exit code whether anything failed.
"""

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, shared_path
from PIL import Image

from data_prep import job, stages
from normalized_faces import batch, cli, data, encoder_cache, evaluate, inference, photos
from normalized_faces.fvae import command as fvae_command
from normalized_faces.quiet_start import filter_startup_lines

SAMPLES = REPO / "normalized_faces" / "samples"
NORMALIZE_FACE = pathlib.Path(sys.executable).parent / "normalize-face"


# --- normalize-face on hostile paths --------------------------------------------------------------


@pytest.fixture
def hostile_folder(tmp_path):
    """Real photos under colliding names beside paths that are not photos."""
    folder = tmp_path / "in"
    folder.mkdir()
    photo = Image.open(SAMPLES / "grace_hopper.jpg")
    for extension in ("webp", "bmp", "tiff"):  # one stem, three files: three faces
        photo.save(folder / f"face.{extension}")
    shutil.copy(SAMPLES / "joe_biden.jpg", folder / "grid.jpg")  # must not become grid.png
    shutil.copy(SAMPLES / "eileen_collins.jpg", tmp_path / "photo.jpg")  # given by a relative path
    (folder / "a_folder.jpg").mkdir()
    os.symlink(folder / "loop_b.jpg", folder / "loop_a.jpg")
    os.symlink(folder / "loop_a.jpg", folder / "loop_b.jpg")
    os.mkfifo(folder / "pipe.jpg")
    return folder


def test_normalize_face_writes_every_good_photo_once_and_a_line_for_each_bad_path(exported, hostile_folder):
    folder = hostile_folder
    out = folder.parent / "out"
    bad = ["a_folder.jpg", "loop_a.jpg", "pipe.jpg", "missing.jpg"]
    good = ["face.webp", "face.bmp", "face.tiff", "grid.jpg"]
    result = subprocess.run(
        [str(NORMALIZE_FACE), f"--model={exported.parent}", f"--output_dir={out}", "--save_aligned", "photo.jpg"]
        + [str(folder / name) for name in good + bad],
        capture_output=True,
        text=True,
        timeout=600,  # a FIFO read would block for ever
        cwd=folder.parent,
    )
    print(result.stdout, result.stderr)
    assert result.returncode == 1, result.stderr  # some failed, the rest written
    assert "Traceback" not in result.stderr and "cuInit" not in result.stderr
    lines = result.stdout.splitlines()
    for name, reason in zip(bad, ["a folder", "Too many levels of symbolic links", "a FIFO", "no such file"]):
        assert sum(line.startswith(str(folder / name) + ":") and reason in line for line in lines) == 1, name
    assert "normalized 5 faces from 5 of 9 photos" in result.stdout and "4 photos failed" in result.stdout
    faces = sorted(p.name for p in out.glob("*.png") if not p.name.endswith("_aligned.png"))
    assert faces == ["face_bmp.png", "face_tiff.png", "face_webp.png", "grid.png", "grid_2.png", "photo.png"]
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] > 5 * 200  # the run's grid (a row per face), not grid.jpg's face
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_output_names_never_meet_within_a_run():
    def found(*paths):
        return [batch.FoundFace(p, 0, 1, None, None) for p in paths]

    stems = cli.output_names(found("/x/a/01.jpg", "/x/b/01.jpg", "/x/c/02.jpg", "/x/c/m.jpg", "/x/c/m_aligned.jpg"))
    assert stems == ["a_01", "b_01", "02", "m", "m_aligned_2"]  # m's _aligned.png is taken
    files = {stem + suffix for stem in stems for suffix in cli.FACE_FILE_SUFFIXES}
    assert len(files) == len(stems) * len(cli.FACE_FILE_SUFFIXES)
    assert cli.output_names(found("/x/turntables.png", "/x/Grid.PNG")) == ["turntables_2", "Grid_2"]
    faces = [batch.FoundFace("/x/a.jpg", i, 2, None, None) for i in range(2)]
    assert cli.output_names(faces) == ["a_face0", "a_face1"]


def _blocked_output_dirs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    yield a_file, "is a file"
    yield a_file / "below", "cannot create it"
    yield pathlib.Path("/proc/normalized_faces_out"), "cannot create it"  # a read-only file system
    if os.geteuid() != 0:  # root writes through permission bits
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        yield read_only, "cannot write in it"


def test_a_bad_output_folder_is_refused_before_any_model_loads(tmp_path):
    """The model path does not exist: had a command loaded it first, its error would be the model's."""
    photo = str(SAMPLES / "grace_hopper.jpg")
    no_model = str(tmp_path / "no_model")
    for output_dir, reason in _blocked_output_dirs(tmp_path):
        for command in (
            lambda out, lines: cli.run(no_model, out, [photo], report=lines.append),
            lambda out, lines: fvae_command.run(no_model, out, [photo], report=lines.append),
            lambda out, lines: evaluate.run(no_model, str(SAMPLES.parent / "samples"), None, out, report=lines.append),
        ):
            lines = []
            assert command(str(output_dir), lines) == 2
            assert len(lines) == 1 and str(output_dir) in lines[0] and reason in lines[0], lines


def test_a_model_that_does_not_load_is_one_line(tmp_path):
    lines = []
    assert (
        cli.run(
            str(tmp_path / "nothing_here"), str(tmp_path / "out"), [str(SAMPLES / "joe_biden.jpg")], report=lines.append
        )
        == 2
    )
    assert len(lines) == 1 and "nothing_here: cannot load it" in lines[0]


def test_evaluate_exits_1_when_photos_failed_as_normalize_face_does(exported, tmp_path):
    people = tmp_path / "people"
    for name, sample in (("hopper", "grace_hopper"), ("collins", "eileen_collins")):
        (people / name).mkdir(parents=True)
        shutil.copy(SAMPLES / f"{sample}.jpg", people / name / "1.jpg")
        Image.open(SAMPLES / f"{sample}.jpg").transpose(Image.FLIP_LEFT_RIGHT).save(people / name / "2.jpg")
    (people / "hopper" / "3.jpg").write_text("not a photo")
    lines = []
    code = evaluate.run(
        str(exported.parent), str(people), None, str(tmp_path / "out"), judges=["dlib_resnet"], report=lines.append
    )
    print("\n".join(lines))
    assert code == 1 and any("3.jpg: cannot read it: not_an_image" in line for line in lines)
    assert json.loads((tmp_path / "out" / "report.json").read_text())["evaluated"] == 4
    (people / "hopper" / "3.jpg").unlink()
    assert (
        evaluate.run(
            str(exported.parent), str(people), None, str(tmp_path / "out"), judges=["dlib_resnet"], report=print
        )
        == 0
    )


def test_atomic_writes_leave_the_old_file_whole_when_a_write_fails(tmp_path):
    target = tmp_path / "grid.png"
    batch.write_bytes_atomically(target, b"first")
    with pytest.raises(TypeError):
        batch.write_bytes_atomically(target, object())  # fails inside the write
    assert target.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_long_lists_show_progress():
    lines = []
    meter = batch.Progress(100, "faces", lines.append, every=0.0)
    for done in range(0, 101, 25):
        meter.update(done)
    assert lines[-1].startswith("faces: 100/100") and "/s" in lines[-1] and "left" in lines[-1]
    quiet = []
    batch.Progress(5, "faces", quiet.append, every=0.0).update(5)  # short lists: no progress lines
    assert quiet == []


def test_tensorflow_start_up_noise_is_removed_and_nothing_else():
    script = "from normalized_faces.quiet_start import import_tensorflow; import_tensorflow()"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "InitializeLog" not in result.stderr and "cuInit" not in result.stderr, (
        result.stderr
    )
    kept = filter_startup_lines("W0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\nreal problem\n")
    assert kept == "real problem\n"


# --- photos larger than the limit ----------------------------------------------------------------


def test_a_huge_jpeg_is_decoded_smaller_and_other_formats_name_the_projects_limit():
    buffer = io.BytesIO()
    Image.new("RGB", (12000, 12000), (150, 110, 90)).save(buffer, "JPEG", quality=40)
    image = photos.decode_photo(buffer.getvalue())
    assert image.shape == (6000, 6000, 3) and abs(int(image[0, 0, 0]) - 150) <= 3
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")
    with pytest.raises(photos.RejectedPhoto, match="81,000,000 pixels, more than the 64,000,000") as rejected:
        photos.decode_photo(buffer.getvalue())
    assert rejected.value.reason == "too_large" and "89,478,485" not in str(rejected.value)


# --- data prep ------------------------------------------------------------------------------------


def _lfw10_manifest(tmp_path, people=2, per_person=2):
    root = shared_path("faces", "lfw10")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and len(list(p.iterdir())) >= per_person)[:people]
    manifest = tmp_path / "photos.jsonl"
    with manifest.open("w") as file:
        for name in names:
            for photo in sorted((root / name).iterdir())[:per_person]:
                file.write(json.dumps({"path": str(photo), "identity": name}) + "\n")
    return manifest


def test_nofilters_data_prep_writes_records_of_real_photos(tmp_path):
    """Every good photo becomes a record; a FIFO, a folder and a link loop among them get a rejection each."""
    manifest = _lfw10_manifest(tmp_path)
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    os.symlink(tmp_path / "loop_b.jpg", tmp_path / "loop_a.jpg")
    os.symlink(tmp_path / "loop_a.jpg", tmp_path / "loop_b.jpg")
    with manifest.open("a") as file:
        for name in ("pipe.jpg", "folder.jpg", "loop_a.jpg"):
            file.write(json.dumps({"path": str(tmp_path / name), "identity": "bad"}) + "\n")
    config = stages.PrepConfig(mode="photos", apply_filters=False, num_morphs=0)
    summary = job.run(
        str(manifest), str(tmp_path / "out"), config, ["--direct_running_mode=in_memory"], num_shards=1, preview_count=2
    )
    job.print_summary(summary, str(tmp_path / "out"))
    assert summary["accepted"] == summary["written_photos"] == 4 and summary["rejected_by_reason"] == {"unreadable": 3}
    details = sorted(
        json.loads(line)["detail"] for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()
    )
    assert details == [
        "Too many levels of symbolic links",
        "a FIFO (named pipe), not a photo file",
        "a folder, not a photo file",
    ]
    records = [
        r
        for split in data.SPLITS
        for f in tmp_path.glob(f"out/{split}-*.tfrecord")
        for r in tf.data.TFRecordDataset(str(f))
    ]
    assert len(records) == 4 and data.decode_record(records[0].numpy()).landmarks.shape == (68, 2)


def test_a_job_whose_every_photo_hit_an_internal_error_fails_naming_it(tmp_path):
    rejected = tmp_path / "rejected.jsonl"
    rejected.write_text(
        "".join(
            json.dumps(
                stages.rejection(f"/p/{i}.jpg", "a", "photo", "error", "UnboundLocalError: cannot access 'after'")
            )
            + "\n"
            for i in range(3)
        )
    )
    summary = {"inputs": 3, "accepted": 0, "rejected": 3, "planned_morphs": 0, "written_morphs": 0}
    summary["internal_errors"] = job.internal_errors(str(rejected))
    assert summary["internal_errors"] == {
        "count": 3,
        "most_common": "UnboundLocalError: cannot access 'after'",
        "example": "/p/0.jpg",
    }
    with pytest.raises(job.InternalErrors, match="3 of 3 inputs were rejected by an internal error.*UnboundLocalError"):
        job.check_books(summary)
    job.check_books({**summary, "internal_errors": {"count": 0}})  # filters rejecting everything is not a bug


def test_data_prep_says_why_it_planned_fewer_morphs_than_asked():
    summary = {"planned_morphs": 0, "requested_morphs": 500, "records": {"train/average": 1, "validation/average": 1}}
    line = job.morph_shortfall(summary)
    assert "planned 0 of the 500 morphs" in line and "train has 1 face and validation has 1 face" in line


# --- damaged record files and models --------------------------------------------------------------


def _damaged_copies(original: pathlib.Path, folder: pathlib.Path):
    content = original.read_bytes()
    flipped = bytearray(content)
    flipped[len(content) // 2] ^= 0xFF
    for kind, damaged in (
        ("truncated", content[: len(content) * 2 // 3]),
        ("flipped", bytes(flipped)),
        ("padded", content + b"\0" * 20),
    ):
        yield kind, damaged


def test_a_damaged_shard_is_named_with_its_record(tiny_data_dir, tmp_path):
    for kind, damaged in _damaged_copies(pathlib.Path(data.record_files(tiny_data_dir, "train")[0]), tmp_path):
        copy = tmp_path / kind
        shutil.copytree(tiny_data_dir, copy, ignore=shutil.ignore_patterns("encoder_cache"))
        shard = pathlib.Path(data.record_files(copy, "train")[0])
        shard.write_bytes(damaged)
        with pytest.raises(data.RecordFileError) as error:
            data.mean_face(str(copy))
        message = str(error.value)
        print(kind, "->", message)
        assert message.startswith(f"{shard}: record ") and "run data prep again" in message


def test_a_record_whose_texture_has_the_wrong_shape_is_named(tiny_data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(tiny_data_dir, copy, ignore=shutil.ignore_patterns("encoder_cache"))
    shard = pathlib.Path(data.record_files(copy, "train")[0])
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    example = tf.train.Example.FromString(records[1])
    small = cv2.imencode(".png", np.zeros([10, 10, 3], np.uint8))[1].tobytes()
    example.features.feature["texture"].bytes_list.value[:] = [small]
    records[1] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(shard)) as writer:
        for record in records:
            writer.write(record)
    with pytest.raises(data.RecordFileError, match=rf"{shard}: record 1 cannot be read"):
        data.mean_face(str(copy))


def test_a_damaged_saved_model_is_named(exported, tmp_path):
    variables = next((exported / "variables").glob("variables.data-*"))
    for kind, damaged in _damaged_copies(variables, tmp_path):
        copy = tmp_path / kind / "1"
        shutil.copytree(exported, copy)
        (copy / "variables" / variables.name).write_bytes(damaged)
        try:
            model = inference.load_model(str(copy))
        except inference.ModelLoadError as error:
            print(kind, "->", error)
            assert str(copy) in str(error) and "export it again" in str(error)
            continue
        # Bytes past the end are never read: then the model must be the original one, whole.
        assert kind == "padded", f"a {kind} variables file loaded"
        images = np.full([1, 224, 224, 3], 0.5, np.float32)
        original = inference.load_model(str(exported))(images)["normalized_face"]
        assert np.array_equal(model(images)["normalized_face"], original)


def test_the_encoder_cache_goes_under_the_run_when_data_cannot_be_written(tiny_data_dir, tmp_path):
    """DATA/encoder_cache blocked by a file stands in for a read-only DATA (root writes through chmod)."""
    from normalized_faces.encoders import get_encoder

    copy = tmp_path / "data"
    shutil.copytree(tiny_data_dir, copy, ignore=shutil.ignore_patterns("encoder_cache"))
    (copy / encoder_cache.CACHE_FOLDER).write_text("not a folder")
    lines = []
    folder = encoder_cache.build(
        str(copy), get_encoder("dlib_resnet"), report=lines.append, fallback_root=tmp_path / "run"
    )
    assert folder.parent == tmp_path / "run" / encoder_cache.CACHE_FOLDER and (folder / encoder_cache.MANIFEST).exists()
    assert any(f"cannot write under {copy}" in line and str(folder) in line for line in lines)
    batch_of = next(iter(data.make_dataset(str(copy), "train", batch_size=2, encoder_cache=folder)))
    assert batch_of["features"].shape[0] == 2


@pytest.mark.parametrize(
    "command, expected",
    [
        (["train_main.py", "--data_dir={missing}", "--model_dir={tmp}/run"], "metadata.json is missing"),
        (["-m", "export.saved_model", "--model_dir={missing}", "--export_dir={tmp}/export"], "{missing}"),
        (["-m", "data_prep.pipeline", "--input={missing}", "--output_dir={tmp}/data"], "{missing}"),
    ],
)
def test_the_absl_commands_say_an_input_problem_in_one_line(tmp_path, command, expected):
    values = {"missing": str(tmp_path / "missing"), "tmp": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, *[part.format(**values) for part in command]],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    print(result.stderr[-2000:])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected.format(**values) in errors[0]


def test_several_sources_are_one_input_and_an_identity_in_two_is_refused(tmp_path):
    from normalized_faces import inputs

    london = shared_path("faces", "london")
    for name, ids in (("a.csv", ["001", "002"]), ("b.csv", ["003"]), ("c.csv", ["002"])):
        (tmp_path / name).write_text(
            "path,identity\n" + "".join(f"{london / i / f'{i}_neutral.jpg'},{i}\n" for i in ids)
        )
    both = inputs.list_inputs(f"{tmp_path / 'a.csv'},{tmp_path / 'b.csv'}")
    assert [entry.identity for entry in both] == ["001", "002", "003"]
    with pytest.raises(ValueError, match="identity '002' is in both"):
        inputs.list_inputs(f"{tmp_path / 'a.csv'},{tmp_path / 'c.csv'}")
