import hashlib
import subprocess

import numpy as np
import pytest
from PIL import Image

from alexnet_keras.synthetic import (
    CLASS_NAMES,
    draw_image,
    draw_image_with_box,
    make_synthetic_dataset,
)


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }


def test_deterministic_from_the_seed(tmp_path):
    make_synthetic_dataset(tmp_path / "a", num_classes=3, images_per_class=4, seed=7)
    make_synthetic_dataset(tmp_path / "b", num_classes=3, images_per_class=4, seed=7)
    make_synthetic_dataset(tmp_path / "c", num_classes=3, images_per_class=4, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert len(digest(tmp_path / "a")) == 12


def test_named_classes_draw_the_same_images_as_in_the_full_set(tmp_path):
    make_synthetic_dataset(tmp_path / "all", num_classes=10, images_per_class=2, seed=4)
    make_synthetic_dataset(
        tmp_path / "two", images_per_class=2, seed=4, classes=["stripes", "circle"]
    )
    two = digest(tmp_path / "two")
    assert sorted(two) == [
        "circle/circle_0000.jpg",
        "circle/circle_0001.jpg",
        "stripes/stripes_0000.jpg",
        "stripes/stripes_0001.jpg",
    ]
    assert two == {name: value for name, value in digest(tmp_path / "all").items() if name in two}
    with pytest.raises(ValueError, match="unknown classes hexagon"):
        make_synthetic_dataset(tmp_path / "bad", classes=["circle", "hexagon"])
    with pytest.raises(ValueError, match="at least 2 different"):
        make_synthetic_dataset(tmp_path / "bad", classes=["circle", "circle"])


def test_classes_differ_in_shape_not_in_colour(tmp_path):
    make_synthetic_dataset(tmp_path, num_classes=10, images_per_class=6, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CLASS_NAMES)
    mean_colours = {}
    for class_name in CLASS_NAMES:
        images = [
            np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
            for p in sorted((tmp_path / class_name).glob("*.jpg"))
        ]
        assert all(220 <= min(image.shape[:2]) for image in images)
        mean_colours[class_name] = np.mean([image.mean(axis=(0, 1)) for image in images], axis=0)
        # Random colours within a class: no single colour identifies it.
        assert np.std([image.mean(axis=(0, 1)) for image in images], axis=0).mean() > 10


def test_script_and_bad_arguments(tmp_path, python, repo_root):
    result = subprocess.run(
        [
            python,
            "data/make_synthetic.py",
            "--output_dir",
            tmp_path / "out",
            "--num_classes",
            "2",
            "--images_per_class",
            "3",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 6
    with pytest.raises(ValueError, match="num_classes must be between 2 and 10"):
        make_synthetic_dataset(tmp_path / "bad", num_classes=11)


# sha256 of the raw RGB bytes of draw_image's first two images of every class for the seeds
# 0, 1 and 5, each class drawn with its own generator as make_synthetic_dataset draws it:
# computed with the code before draw_image_with_box existed. A regression fixture: exposing
# the box must not change a pixel of the demo's data.
DRAWN_IMAGES_SHA256 = "8026edf8ee866445f0b9a981c3ce3abd960d720de0cd60b57b539664c5fe7183"


def class_generator(seed, class_name):
    return np.random.default_rng([seed, CLASS_NAMES.index(class_name)])


def test_the_box_leaves_every_image_as_it_was():
    drawn = hashlib.sha256()
    for seed in (0, 1, 5):
        for class_name in CLASS_NAMES:
            plain, boxed = class_generator(seed, class_name), class_generator(seed, class_name)
            for _ in range(2):
                image = draw_image(class_name, plain)
                with_box, _ = draw_image_with_box(class_name, boxed)
                assert image.tobytes() == with_box.tobytes(), (seed, class_name)
                drawn.update(image.tobytes())
    assert drawn.hexdigest() == DRAWN_IMAGES_SHA256


def test_the_box_holds_the_shape():
    """Where the image differs from its background colour (its corners' median; noise and
    blur aside), it differs inside the box: the shape is there, not elsewhere."""
    for class_name in ("circle", "square", "star", "checkerboard", "crescent"):
        rng = class_generator(3, class_name)
        for _ in range(4):
            image, (left, top, right, bottom) = draw_image_with_box(class_name, rng)
            pixels = np.asarray(image, np.float32)
            height, width = pixels.shape[:2]
            assert 0 <= left < right <= width and 0 <= top < bottom <= height
            corners = np.concatenate(
                [pixels[:8, :8], pixels[:8, -8:], pixels[-8:, :8], pixels[-8:, -8:]]
            ).reshape(-1, 3)
            distance = np.abs(pixels - np.median(corners, axis=0)).sum(axis=-1)
            rows, columns = np.mgrid[:height, :width]
            inside = (columns >= left) & (columns < right) & (rows >= top) & (rows < bottom)
            changed = distance > 120  # far above the noise and the faint lines' share
            assert changed[inside].sum() > 0.1 * inside.sum(), class_name
            # The background lines may cross it; the shape itself stays inside.
            assert changed[~inside].sum() < 0.5 * changed[inside].sum(), class_name
