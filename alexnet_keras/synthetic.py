"""The embedded default dataset: procedurally drawn images in an ImageFolder layout.

Ten classes of shapes and textures. Colours, positions, sizes, rotations, image sizes,
backgrounds and noise are random, so a network must learn shape, not colour or position:
AlexNet learns it well in a few CPU minutes, but not in one epoch. Deterministic from the seed.
"""

import math
import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import replaced_atomically

CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "stripes",
    "checkerboard",
    "crescent",
    "dots",
)


def _random_colour(rng, avoid=None):
    """A random RGB colour, far enough from `avoid` to stay visible."""
    while True:
        colour = tuple(int(value) for value in rng.integers(0, 256, size=3))
        if avoid is None or np.abs(np.subtract(colour, avoid)).sum() > 150:
            return colour


def _polygon(center, radius, sides, rotation, inner_ratio=None):
    points = []
    count = sides * 2 if inner_ratio else sides
    for index in range(count):
        angle = rotation + 2 * math.pi * index / count
        length = radius * (inner_ratio if inner_ratio and index % 2 else 1.0)
        points.append((center[0] + length * math.cos(angle), center[1] + length * math.sin(angle)))
    return points


def draw_image(class_name, rng):
    """One image of `class_name`, drawn with the generator `rng`."""
    return draw_image_with_box(class_name, rng)[0]


def draw_image_with_box(class_name, rng):
    """-> (the image `draw_image` draws, the shape's box (left, top, right, bottom) in its
    pixels): the square of side twice the shape's radius around its centre, which holds the
    shape (the cross's arm ends and the dots' edges may pass it by a fifth of the radius)."""
    width, height = (int(value) for value in rng.integers(220, 360, size=2))
    background = _random_colour(rng)
    foreground = _random_colour(rng, avoid=background)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    # A faint distracting texture in the background.
    for _ in range(int(rng.integers(0, 6))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = rng.integers(0, width), rng.integers(0, height)
        draw.line((x0, y0, x1, y1), fill=_random_colour(rng), width=int(rng.integers(1, 4)))

    short = min(width, height)
    radius = float(rng.uniform(0.22, 0.42)) * short
    center = (
        float(rng.uniform(radius, width - radius)),
        float(rng.uniform(radius, height - radius)),
    )
    rotation = float(rng.uniform(0, 2 * math.pi))
    box = (center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius)

    _draw_shape(image, class_name, center, radius, rotation, (foreground, background), rng)

    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    pixels = np.asarray(image, dtype=np.float32)
    pixels += float(rng.uniform(2.0, 12.0)) * rng.standard_normal(pixels.shape, dtype=np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), box


def _draw_shape(image, class_name, center, radius, rotation, colours, rng):
    """Draws the class's shape into `image`, centred at `center` within `radius`."""
    foreground, background = colours
    width, height = image.size
    draw = ImageDraw.Draw(image)
    box = (center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius)
    if class_name == "circle":
        draw.ellipse(box, fill=foreground)
    elif class_name == "square":
        draw.polygon(_polygon(center, radius, 4, rotation), fill=foreground)
    elif class_name == "triangle":
        draw.polygon(_polygon(center, radius, 3, rotation), fill=foreground)
    elif class_name == "star":
        draw.polygon(_polygon(center, radius, 5, rotation, inner_ratio=0.4), fill=foreground)
    elif class_name == "cross":
        arm = radius * 0.3
        for angle in (rotation, rotation + math.pi / 2):
            dx, dy = math.cos(angle), math.sin(angle)
            corners = [
                (
                    center[0] + sx * radius * dx - sy * arm * dy,
                    center[1] + sx * radius * dy + sy * arm * dx,
                )
                for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
            ]
            draw.polygon(corners, fill=foreground)
    elif class_name == "ring":
        draw.ellipse(box, outline=foreground, width=max(3, int(radius * 0.25)))
    elif class_name == "stripes":
        stripe = Image.new("RGB", (width * 2, height * 2), background)
        stripe_draw = ImageDraw.Draw(stripe)
        period = int(rng.integers(12, 30))
        for x in range(0, width * 2, period):
            stripe_draw.rectangle((x, 0, x + period // 2, height * 2), fill=foreground)
        stripe = stripe.rotate(math.degrees(rotation), center=(width, height))
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).rectangle(box, fill=255)
        image.paste(
            stripe.crop((width // 2, height // 2, width // 2 + width, height // 2 + height)),
            mask=mask,
        )
    elif class_name == "checkerboard":
        cells = int(rng.integers(3, 6))
        cell = 2 * radius / cells
        for row in range(cells):
            for column in range(cells):
                if (row + column) % 2 == 0:
                    x0, y0 = box[0] + column * cell, box[1] + row * cell
                    draw.rectangle((x0, y0, x0 + cell, y0 + cell), fill=foreground)
    elif class_name == "crescent":
        draw.ellipse(box, fill=foreground)
        shift = radius * 0.55
        offset = (shift * math.cos(rotation), shift * math.sin(rotation))
        draw.ellipse(
            (box[0] + offset[0], box[1] + offset[1], box[2] + offset[0], box[3] + offset[1]),
            fill=background,
        )
    elif class_name == "dots":
        for _ in range(int(rng.integers(6, 12))):
            dot = radius * float(rng.uniform(0.1, 0.2))
            x = center[0] + float(rng.uniform(-radius, radius))
            y = center[1] + float(rng.uniform(-radius, radius))
            draw.ellipse((x - dot, y - dot, x + dot, y + dot), fill=foreground)
    else:
        raise ValueError(f"unknown class {class_name!r}; known: {', '.join(CLASS_NAMES)}")


def make_synthetic_dataset(output_dir, num_classes=10, images_per_class=150, seed=0, classes=None):
    """Writes `output_dir/<class>/<class>_NNNN.jpg` for the first `num_classes` classes, or
    for the named `classes`; returns the number of images written. A class's images depend
    only on the seed and the class, not on which other classes are written."""
    if classes is None:
        if not 2 <= num_classes <= len(CLASS_NAMES):
            raise UsageError(
                f"num_classes must be between 2 and {len(CLASS_NAMES)}, got {num_classes}"
            )
        classes = CLASS_NAMES[:num_classes]
    unknown = [name for name in classes if name not in CLASS_NAMES]
    if unknown:
        raise UsageError(f"unknown classes {', '.join(unknown)}; known: {', '.join(CLASS_NAMES)}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise UsageError(f"classes must be at least 2 different names, got {', '.join(classes)}")
    if images_per_class < 1:
        raise UsageError(f"images_per_class must be >= 1, got {images_per_class}")
    output_dir = pathlib.Path(output_dir)
    count = 0
    for class_name in classes:
        class_dir = output_dir / class_name
        class_dir.mkdir(parents=True, exist_ok=True)
        # One generator per class: adding classes or images never changes existing ones.
        rng = np.random.default_rng([seed, CLASS_NAMES.index(class_name)])
        for image_index in range(images_per_class):
            path = class_dir / f"{class_name}_{image_index:04d}.jpg"
            image = draw_image(class_name, rng)
            with replaced_atomically(path) as temporary:
                image.save(temporary, format="JPEG", quality=90)
            count += 1
    return count
