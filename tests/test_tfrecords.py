"""The converter on real files: good images, every kind of bad one, kill -9 and resume."""

import io
import json
import os
import signal
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_keras.synthetic import make_synthetic_dataset
from alexnet_keras_cli import build_tfrecords
from commands import run_main

CONVERTER = ["data/build_tfrecords.py"]


def run_converter(python, repo_root, *arguments, timeout=600):
    """The converter's script in a process of its own."""
    return subprocess.run(
        [python, *CONVERTER, *map(str, arguments)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def convert_here(*arguments):
    """The converter's command in this process (tests/commands.py)."""
    return run_main(build_tfrecords.main, *arguments)


def read_records(output_dir, split):
    examples = []
    for path in sorted(output_dir.glob(f"{split}-*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(path)):
            example = tf.train.Example.FromString(record.numpy())
            feature = example.features.feature
            examples.append(
                {
                    "shard": path.name,
                    "filename": feature["image/filename"].bytes_list.value[0].decode(),
                    "label": feature["image/class/label"].int64_list.value[0],
                    "text": feature["image/class/text"].bytes_list.value[0].decode(),
                    "height": feature["image/height"].int64_list.value[0],
                    "width": feature["image/width"].int64_list.value[0],
                    "format": feature["image/format"].bytes_list.value[0],
                    "encoded": feature["image/encoded"].bytes_list.value[0],
                }
            )
    return examples


def decode(encoded):
    return tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE")


def save(image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def png_with_header_size(width, height):
    """A small PNG file whose header claims width x height (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    header = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Good images of three classes next to every kind of bad file. Returns (root, good
    relative paths, {bad relative path: expected words of the reason})."""
    root = tmp_path_factory.mktemp("messy") / "images"
    make_synthetic_dataset(root, num_classes=3, images_per_class=12, seed=5)
    good = {str(p.relative_to(root)) for p in root.rglob("*.jpg")}
    circle, square, triangle = root / "circle", root / "square", root / "triangle"
    rng = np.random.default_rng(0)

    # Unusual but valid: converted.
    save(Image.new("RGB", (300, 280), (200, 10, 10)), circle / "png_named.jpg", format="PNG")
    save(Image.new("CMYK", (300, 260), (10, 200, 30, 0)), circle / "cmyk.jpg", format="JPEG")
    sixteen = Image.fromarray((rng.uniform(0, 65535, (270, 290))).astype(np.uint16))
    save(sixteen, square / "sixteen_bit.png")
    palette = Image.new("P", (280, 300))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    save(palette, square / "palette.png", transparency=0)
    save(Image.new("RGBA", (300, 300), (0, 0, 255, 0)), square / "transparent.png")
    save(Image.new("RGB", (60, 40), (0, 255, 0)), triangle / "small.jpg", quality=95)
    save(Image.new("RGB", (3000, 40), (0, 0, 255)), triangle / "wide.jpg", quality=95)
    save(Image.new("L", (280, 280), 77), triangle / "grey.jpg")
    # EXIF orientation 6: the stored image is shown rotated 90 degrees clockwise.
    oriented = Image.new("RGB", (300, 260), (255, 0, 0))
    oriented.paste((0, 0, 255), (150, 0, 300, 260))
    exif = Image.Exif()
    exif[0x0112] = 6
    save(oriented, triangle / "rotated.jpg", exif=exif.tobytes(), quality=95)
    good |= {
        "circle/png_named.jpg",
        "circle/cmyk.jpg",
        "square/sixteen_bit.png",
        "square/palette.png",
        "square/transparent.png",
        "triangle/small.jpg",
        "triangle/wide.jpg",
        "triangle/grey.jpg",
        "triangle/rotated.jpg",
    }

    bad = {}
    (circle / "empty.jpg").write_bytes(b"")
    bad["circle/empty.jpg"] = "not an image"
    whole = (circle / "circle_0000.jpg").read_bytes()
    (circle / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    bad["circle/truncated.jpg"] = "truncated"
    (square / "noise.jpg").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    bad["square/noise.jpg"] = "not an image"
    (square / "notes.png").write_text("this is not a picture\n")
    bad["square/notes.png"] = "not an image"
    (triangle / "bomb.png").write_bytes(png_with_header_size(30000, 30000))
    bad["triangle/bomb.png"] = "decompression bomb"
    save(Image.new("RGB", (12, 400)), triangle / "sliver.png")
    bad["triangle/sliver.png"] = "too small"
    os.symlink(root / "does-not-exist.jpg", triangle / "dangling.jpg")
    bad["triangle/dangling.jpg"] = "unreadable"
    # Not images at all: ignored, not reported.
    (circle / "README.txt").write_text("notes")
    (square / ".DS_Store").write_bytes(b"\x00\x01")
    return root, good, bad


@pytest.fixture(scope="module")
def converted(messy_folder, tmp_path_factory, python, repo_root):
    root, _, _ = messy_folder
    output_dir = tmp_path_factory.mktemp("converted")
    result = run_converter(
        python,
        repo_root,
        "--input_dir",
        root,
        "--output_dir",
        output_dir,
        "--val_fraction",
        "0.25",
        "--num_shards",
        "3",
        "--workers",
        "2",
    )
    return result, output_dir


def test_every_good_file_lands_exactly_once(messy_folder, converted):
    _, good, _ = messy_folder
    result, output_dir = converted
    assert result.returncode == 0, result.stderr
    examples = read_records(output_dir, "train") + read_records(output_dir, "validation")
    filenames = [example["filename"] for example in examples]
    assert sorted(filenames) == sorted(good)
    for example in examples:
        assert (example["height"], example["width"], example["format"]) == (256, 256, b"JPEG")
        image = decode(example["encoded"])
        assert image.shape == (256, 256, 3)
    dataset = json.loads((output_dir / "dataset.json").read_text())
    assert dataset["num_examples"]["train"] + dataset["num_examples"]["validation"] == len(good)
    assert dataset["ignored_files"] == 2
    assert "wrote" in result.stdout and "skipped 7" in result.stdout


def test_every_bad_file_is_reported_with_its_reason(messy_folder, converted):
    _, _, bad = messy_folder
    result, output_dir = converted
    dataset = json.loads((output_dir / "dataset.json").read_text())
    reasons = {entry["file"]: entry["reason"] for entry in dataset["skipped"]}
    assert set(reasons) == set(bad)
    for filename, words in bad.items():
        assert words in reasons[filename], (filename, reasons[filename])
        assert filename in result.stderr


def test_labels_follow_sorted_folder_names(converted):
    _, output_dir = converted
    assert (output_dir / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    for example in read_records(output_dir, "train") + read_records(output_dir, "validation"):
        folder = example["filename"].split("/")[0]
        assert example["text"] == folder
        assert example["label"] == ["circle", "square", "triangle"].index(folder)


def test_shards_are_not_class_ordered(converted):
    _, output_dir = converted
    for shard in sorted(output_dir.glob("train-*.tfrecord")):
        labels = [e["label"] for e in read_records(output_dir, "train") if e["shard"] == shard.name]
        assert len(set(labels)) == 3
        assert labels != sorted(labels)


def test_images_are_oriented_and_composited(converted):
    _, output_dir = converted
    examples = {
        e["filename"]: e
        for e in read_records(output_dir, "train") + read_records(output_dir, "validation")
    }
    rotated = decode(examples["triangle/rotated.jpg"]["encoded"]).numpy()
    # After the EXIF rotation the red half is on top and the blue half at the bottom.
    assert rotated[20, 128, 0] > 200 and rotated[20, 128, 2] < 50
    assert rotated[235, 128, 2] > 200 and rotated[235, 128, 0] < 50
    transparent = decode(examples["square/transparent.png"]["encoded"]).numpy()
    assert transparent.min() > 245  # fully transparent blue on the white background
    cmyk = decode(examples["circle/cmyk.jpg"]["encoded"]).numpy().astype(int)
    assert cmyk[..., 1].mean() < 100 < cmyk[..., 0].mean()


def test_statistics_match_numpy_over_the_decoded_training_images(converted):
    _, output_dir = converted
    dataset = json.loads((output_dir / "dataset.json").read_text())
    pixels = np.concatenate(
        [
            decode(e["encoded"]).numpy().reshape(-1, 3).astype(np.float64)
            for e in read_records(output_dir, "train")
        ]
    )
    np.testing.assert_allclose(dataset["rgb_mean"], pixels.mean(axis=0), atol=0.5)
    np.testing.assert_allclose(dataset["rgb_std"], pixels.std(axis=0), rtol=0.01)
    covariance = np.cov((pixels / 255.0).T, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(dataset["rgb_eigenvalues"], eigenvalues[::-1], rtol=0.02)
    for ours, theirs in zip(dataset["rgb_eigenvectors"], eigenvectors[:, ::-1].T):
        assert abs(abs(np.dot(ours, theirs)) - 1.0) < 1e-3  # same direction, up to sign


def test_explicit_val_folder_is_used(tmp_path):
    make_synthetic_dataset(tmp_path / "in" / "train", num_classes=2, images_per_class=6, seed=1)
    make_synthetic_dataset(tmp_path / "in" / "val", num_classes=2, images_per_class=2, seed=2)
    result = convert_here(
        "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out", "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    validation = read_records(tmp_path / "out", "validation")
    assert sorted(e["filename"] for e in validation) == sorted(
        f"val/{c}/{c}_{i:04d}.jpg" for c in ("circle", "square") for i in range(2)
    )
    assert len(read_records(tmp_path / "out", "train")) == 12


@pytest.mark.parametrize(
    "layout,message",
    [
        ("missing", "does not exist"),
        ("empty", "holds no class folders"),
        ("flat", "holds no class folders"),
        ("no_images", "no image files"),
    ],
)
def test_unusable_input_folders_fail_clearly(tmp_path, layout, message):
    input_dir = tmp_path / "in"
    if layout != "missing":
        input_dir.mkdir()
    if layout == "flat":
        Image.new("RGB", (300, 300)).save(input_dir / "lonely.jpg")
    if layout == "no_images":
        (input_dir / "cats").mkdir()
        (input_dir / "cats" / "notes.txt").write_text("no pictures here")
    result = convert_here("--input_dir", input_dir, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_kill_9_then_rerun_completes_without_duplicates(tmp_path, python, repo_root):
    input_dir, output_dir = tmp_path / "in", tmp_path / "out"
    make_synthetic_dataset(input_dir, num_classes=4, images_per_class=100, seed=3)
    arguments = [
        "--input_dir",
        input_dir,
        "--output_dir",
        output_dir,
        "--num_shards",
        "10",
        "--workers",
        "1",
        "--val_fraction",
        "0.1",
    ]
    process = subprocess.Popen(
        [python, *CONVERTER, *map(str, arguments)],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(output_dir.glob("train-*.tfrecord"))) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the conversion finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    # Completed shards only: a killed shard's temporary file is a hidden ".name.tmp-PID" file.
    finished = {p.name for p in output_dir.glob("*.tfrecord") if not p.name.startswith(".")}
    assert 2 <= len(finished) < 11 and not (output_dir / "dataset.json").exists()

    result = run_converter(python, repo_root, *arguments)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stderr
    assert not list(output_dir.glob("*.tmp-*"))
    filenames = [
        e["filename"]
        for e in read_records(output_dir, "train") + read_records(output_dir, "validation")
    ]
    assert len(filenames) == len(set(filenames)) == 400
    dataset = json.loads((output_dir / "dataset.json").read_text())
    assert dataset["num_examples"] == {"train": 360, "validation": 40}


def test_partitions_combine_into_one_dataset(tmp_path):
    input_dir, output_dir = tmp_path / "in", tmp_path / "out"
    make_synthetic_dataset(input_dir, num_classes=2, images_per_class=10, seed=4)
    common = [
        "--input_dir",
        input_dir,
        "--output_dir",
        output_dir,
        "--num_shards",
        "4",
        "--workers",
        "1",
        "--val_fraction",
        "0.1",
    ]
    first = convert_here(*common, "--num_partitions", "2", "--partition_index", "0")
    assert first.returncode == 0, first.stderr
    assert not (output_dir / "dataset.json").exists()
    assert "missing" in first.stderr
    second = convert_here(*common, "--num_partitions", "2", "--partition_index", "1")
    assert second.returncode == 0, second.stderr
    combined = convert_here(*common)
    assert combined.returncode == 0, combined.stderr
    dataset = json.loads((output_dir / "dataset.json").read_text())
    assert sum(dataset["num_examples"].values()) == 20


# === ImageNet as users have it: a flat val/ folder with a labels file, readable names ===

SYNSETS = ("n01440764", "n01443537")  # the folders' names, as in ImageNet's train/


def imagenet_like_folder(root, per_class=3, val_count=4):
    """train/<synset>/*.JPEG and a flat val/ILSVRC2012_val_NNNNNNNN.JPEG folder; the
    validation file k shows class k % 2. Returns the validation files' synsets, in order."""
    make_synthetic_dataset(root / "drawn", num_classes=2, images_per_class=per_class + 2, seed=7)
    drawn = {
        synset: sorted((root / "drawn" / shape).glob("*.jpg"))
        for synset, shape in zip(SYNSETS, ("circle", "square"))
    }
    for synset, paths in drawn.items():
        (root / "train" / synset).mkdir(parents=True)
        for path in paths[:per_class]:
            (root / "train" / synset / f"{synset}_{path.stem}.JPEG").write_bytes(path.read_bytes())
    (root / "val").mkdir()
    truth = []
    for number in range(1, val_count + 1):
        synset = SYNSETS[number % 2]
        source = drawn[synset][per_class + (number // 2) % 2]
        (root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(source.read_bytes())
        truth.append(synset)
    return truth


def labels_by_file(output_dir, split="validation"):
    return {e["filename"]: (e["label"], e["text"]) for e in read_records(output_dir, split)}


def test_flat_val_folder_without_labels_is_refused_before_any_work(tmp_path):
    imagenet_like_folder(tmp_path / "in")
    result = convert_here(
        "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out", "--workers", "1"
    )
    assert result.returncode == 2
    assert "4 image files directly" in result.stderr and "--val_labels" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("form", ["kaggle_csv", "synset_lines", "devkit_indices"])
def test_flat_val_folder_is_labelled_from_the_labels_file(tmp_path, form):
    truth = imagenet_like_folder(tmp_path / "in")
    extra = []
    if form == "kaggle_csv":
        # Kaggle's rows are not in file order and carry boxes after the synset.
        rows = [
            f"ILSVRC2012_val_{n:08d},{s} 10 20 100 200 {s} 1 2 3 4"
            for n, s in enumerate(truth, start=1)
        ]
        labels = "ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n"
    elif form == "synset_lines":
        labels = "".join(f"{synset}\n" for synset in truth)
    else:
        # The devkit numbers classes in its own order: here the reverse of the sorted one.
        devkit_order = list(reversed(SYNSETS))
        labels = "".join(f"{devkit_order.index(synset) + 1}\n" for synset in truth)
        (tmp_path / "devkit_synsets.txt").write_text("\n".join(devkit_order) + "\n")
        extra = ["--val_label_synsets", tmp_path / "devkit_synsets.txt"]
    (tmp_path / "labels_file").write_text(labels)
    result = convert_here(
        "--input_dir",
        tmp_path / "in",
        "--output_dir",
        tmp_path / "out",
        "--workers",
        "1",
        "--val_labels",
        tmp_path / "labels_file",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    expected = {
        f"val/ILSVRC2012_val_{n:08d}.JPEG": (SYNSETS.index(s), s)
        for n, s in enumerate(truth, start=1)
    }
    assert labels_by_file(tmp_path / "out") == expected
    assert len(read_records(tmp_path / "out", "train")) == 6


@pytest.mark.parametrize(
    "labels,extra,message",
    [
        ("n01440764\n", [], "has 1 labels but the flat validation folder has 4"),
        ("n01440764\nn01443537\nn09999999\nn01440764\n", [], "line 3 names class 'n09999999'"),
        ("1\n2\n1\n2\n", [], "--val_label_synsets"),
        (
            "ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n",
            [],
            "no label for 3 of the 4",
        ),
    ],
)
def test_bad_val_labels_files_are_refused_clearly(tmp_path, labels, extra, message):
    imagenet_like_folder(tmp_path / "in")
    (tmp_path / "labels_file").write_text(labels)
    result = convert_here(
        "--input_dir",
        tmp_path / "in",
        "--output_dir",
        tmp_path / "out",
        "--workers",
        "1",
        "--val_labels",
        tmp_path / "labels_file",
        *extra,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_no_validation_split_is_refused_by_the_converter(tmp_path):
    make_synthetic_dataset(tmp_path / "in", num_classes=2, images_per_class=3, seed=1)
    result = convert_here(
        "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out", "--val_fraction", "0"
    )
    assert result.returncode == 2
    assert "holds out no image" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_readable_class_names_reach_dataset_json_reports_and_exports(tmp_path):
    from alexnet_keras import evaluation, evaluation_report, input_pipeline, serving, training
    from alexnet_keras_base.config import PRESETS
    from alexnet_keras_base.layout import RunDir

    truth = imagenet_like_folder(tmp_path / "in")
    (tmp_path / "val.txt").write_text("\n".join(truth) + "\n")
    # As the devkit's words.txt: tab-separated, many more synsets than the classes.
    (tmp_path / "words.txt").write_text(
        "n00001740\tentity\nn01443537\tgoldfish, Carassius auratus\nn01440764\ttench, Tinca tinca\n"
    )
    result = convert_here(
        "--input_dir",
        tmp_path / "in",
        "--output_dir",
        tmp_path / "out",
        "--workers",
        "1",
        "--val_labels",
        tmp_path / "val.txt",
        "--class_names",
        tmp_path / "words.txt",
    )
    assert result.returncode == 0, result.stderr
    readable = ["tench, Tinca tinca", "goldfish, Carassius auratus"]
    assert (tmp_path / "out" / "labels.txt").read_text().split() == list(SYNSETS)
    info = input_pipeline.load_dataset_info(tmp_path / "out")
    assert info["class_names"] == list(SYNSETS)
    assert info["readable_class_names"] == readable

    # The run records them, so an export's top_k_labels default to them.
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    RunDir(model_dir).record_run(
        PRESETS["demo"],
        input_pipeline.readable_class_names(info),
        tmp_path / "out",
        replicas=1,
        resumed_at_step=None,
    )
    assert serving.labels_for_model(model_dir / "alexnet.keras") == readable

    # Evaluation reports name the classes so.
    model = training.build_model(PRESETS["demo"], num_classes=2)
    model.save(model_dir / "alexnet.keras")
    report = evaluation.evaluate_model(model_dir / "alexnet.keras", tmp_path / "out", batch_size=4)
    assert report["class_names"] == readable and report["class_ids"] == list(SYNSETS)
    evaluation_report.write_report_folder(report, tmp_path / "report")
    rows = (tmp_path / "report" / "per_class.csv").read_text().splitlines()
    assert "tench, Tinca tinca" in rows[1] and "goldfish" in rows[2]


def test_class_names_file_missing_a_class_is_refused(tmp_path):
    truth = imagenet_like_folder(tmp_path / "in")
    (tmp_path / "val.txt").write_text("\n".join(truth) + "\n")
    (tmp_path / "words.txt").write_text("n01440764\ttench\n")
    result = convert_here(
        "--input_dir",
        tmp_path / "in",
        "--output_dir",
        tmp_path / "out",
        "--val_labels",
        tmp_path / "val.txt",
        "--class_names",
        tmp_path / "words.txt",
    )
    assert result.returncode == 2
    assert "no name for 1 of the 2 classes, e.g. n01443537" in result.stderr


def test_max_pixels_above_pillows_default_takes_effect(tmp_path):
    from alexnet_keras.tfrecords import DEFAULT_MAX_PIXELS, load_and_crop

    # 10,000 x 10,000 is above Pillow's default limit (about 89.5 million pixels). The header
    # is real, the pixel data is not: once the limit is raised, decoding is tried and fails.
    bomb = tmp_path / "large.png"
    bomb.write_bytes(png_with_header_size(10_000, 10_000))
    assert 10_000 * 10_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match="decompression bomb"):
        load_and_crop(bomb)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_and_crop(bomb, max_pixels=200_000_000)
    with pytest.raises(ValueError, match="decompression bomb refused"):
        load_and_crop(tmp_path / "large.png", max_pixels=1_000_000)


# === A resume that notices changed inputs ===


def convert_quietly(input_dir, output_dir, messages=None, **kwargs):
    from alexnet_keras.tfrecords import ConvertOptions, convert

    log = messages.append if messages is not None else (lambda message: None)
    options = ConvertOptions(**{"val_fraction": 0.25, "num_shards": 2, "workers": 1, **kwargs})
    return convert(input_dir, output_dir, options, log=log)


def shard_of(output_dir, filename):
    for example in read_records(output_dir, "train") + read_records(output_dir, "validation"):
        if example["filename"] == filename:
            return example
    raise AssertionError(f"{filename} is in no shard")


def repaint(path, colour):
    """Rewrites an image file with other pixels and a later modification time."""
    Image.new("RGB", (300, 300), colour).save(path, quality=95)
    later = os.stat(path).st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(later, later))


@pytest.fixture
def small_folder(tmp_path):
    make_synthetic_dataset(tmp_path / "in", num_classes=2, images_per_class=4, seed=2)
    return tmp_path / "in"


def test_a_changed_file_rebuilds_its_shard_only(small_folder, tmp_path):
    output_dir = tmp_path / "out"
    convert_quietly(small_folder, output_dir)
    changed = "circle/circle_0001.jpg"
    shard = shard_of(output_dir, changed)["shard"]
    untouched = {
        p.name: p.stat().st_mtime_ns for p in output_dir.glob("*.tfrecord") if p.name != shard
    }
    repaint(small_folder / changed, (0, 0, 255))
    messages = []
    convert_quietly(small_folder, output_dir, messages)
    assert any("resuming" in message for message in messages)
    pixels = decode(shard_of(output_dir, changed)["encoded"]).numpy().astype(int)
    assert pixels[..., 2].mean() > 240 and pixels[..., 0].mean() < 15  # the new, blue image
    assert {
        p.name: p.stat().st_mtime_ns for p in output_dir.glob("*.tfrecord") if p.name != shard
    } == untouched


def test_another_input_folder_of_the_same_layout_is_converted_afresh(small_folder, tmp_path):
    import shutil

    convert_quietly(small_folder, tmp_path / "out")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tfrecord")}
    # A copy keeps names, sizes and modification times: only the folder differs.
    shutil.copytree(small_folder, tmp_path / "other", copy_function=shutil.copy2)
    time.sleep(0.01)
    convert_quietly(tmp_path / "other", tmp_path / "out")
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tfrecord")}
    assert before.keys() == after.keys()
    assert all(after[name] != before[name] for name in before)  # every shard written again
    dataset = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert dataset["arguments"]["input_dir"] == str((tmp_path / "other").resolve())


def test_killed_between_new_summary_and_rename_keeps_no_stale_shard(
    small_folder, tmp_path, monkeypatch
):
    output_dir = tmp_path / "out"
    convert_quietly(small_folder, output_dir)
    changed = "square/square_0002.jpg"
    repaint(small_folder / changed, (255, 0, 0))

    class Killed(BaseException):
        pass

    real_replace = os.replace

    def replace_then_die_before_shards(source, destination):
        if str(destination).endswith(".tfrecord"):
            raise Killed  # the new summary is written, the new shard not renamed
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace_then_die_before_shards)
    with pytest.raises(Killed):
        convert_quietly(small_folder, output_dir)
    monkeypatch.setattr(os, "replace", real_replace)
    convert_quietly(small_folder, output_dir)
    pixels = decode(shard_of(output_dir, changed)["encoded"]).numpy().astype(int)
    assert pixels[..., 0].mean() > 240 and pixels[..., 2].mean() < 15  # the new, red image


def forked_workers(pid):
    """The children of `pid` that are forks of it (same command line): its decoding workers,
    not a short-lived helper program it runs while starting (ldconfig and the like)."""

    def command_line(process):
        try:
            with open(f"/proc/{process}/cmdline", "rb") as handle:
                return handle.read()
        except (FileNotFoundError, ProcessLookupError):
            return None

    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []
    parent = command_line(pid)
    return [child for child in children if parent and command_line(child) == parent]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_killed_worker_fails_the_conversion_with_a_message(tmp_path, python, repo_root):
    make_synthetic_dataset(tmp_path / "in", num_classes=4, images_per_class=60, seed=3)
    process = subprocess.Popen(
        [
            python,
            *CONVERTER,
            "--input_dir",
            str(tmp_path / "in"),
            "--output_dir",
            str(tmp_path / "out"),
            "--workers",
            "2",
            "--num_shards",
            "4",
            "--no_progress",
        ],
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # its own process group, to end it and its workers if hung
    deadline = time.monotonic() + 120
    # A worker is a fork seen twice, 50 ms apart: a helper program the converter starts
    # (ldconfig and the like) is a fork with its command line too, for the instant before it
    # runs the program.
    seen, worker = set(), None
    while time.monotonic() < deadline and process.poll() is None and worker is None:
        workers = forked_workers(process.pid)
        worker = next((child for child in workers if child in seen), None)
        seen = set(workers)
        time.sleep(0.05)
    assert worker is not None, "no worker process started"
    os.kill(worker, signal.SIGKILL)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the conversion hung after its worker was killed")
    assert process.returncode == 1
    assert "worker process died" in stderr and "Traceback" not in stderr
