"""The converter's per-image work, run in its worker processes (Pillow and NumPy only): a
source image decoded (any mode, EXIF orientation applied, truncated files refused), its
shorter side rescaled to 256 and the central 256x256 crop kept (paper section 2), encoded as
JPEG, with the pixel moments the dataset statistics sum."""

import io
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from alexnet_keras_base.config import CONVERTER_MAX_PIXELS as DEFAULT_MAX_PIXELS
from alexnet_keras_base.layout import STORED_FORMAT, STORED_SIZE

MIN_SHORTER_SIDE = 16
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb(image, background=(255, 255, 255)):
    """Any Pillow image -> 8-bit RGB; transparency is composited on `background`."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if pixels.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def load_and_crop(path, max_pixels=DEFAULT_MAX_PIXELS, size=STORED_SIZE):
    """Decodes an image file and returns its central size x size RGB crop (shorter side
    rescaled to `size`), as a Pillow image. Raises ValueError with the reason on bad input."""
    # Pillow refuses images above its own MAX_IMAGE_PIXELS before ours is checked: make its
    # limit ours, so that a --max_pixels above Pillow's default takes effect (one image at a
    # time per process, so the global is safe to set).
    Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            raise ValueError(f"decompression bomb refused: {error}") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not an image Pillow can identify") from None
        except OSError as error:
            raise ValueError(f"unreadable: {error}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(
                f"decompression bomb refused: {width}x{height} pixels is more than "
                f"--max_pixels {max_pixels}"
            )
        if min(width, height) < MIN_SHORTER_SIDE:
            raise ValueError(
                f"image too small: {width}x{height} (shorter side under {MIN_SHORTER_SIDE})"
            )
        try:
            if image.format == "JPEG":
                # Let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while staying >= size.
                scale = min(width, height) / size
                if scale >= 2:
                    image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
            image.load()
            image = ImageOps.exif_transpose(image)
            image = _to_rgb(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"corrupt or truncated image data: {error}") from None
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    # Cropping the central square first, then resizing it, equals "shorter side to 256, then
    # central 256x256 crop", and never builds a huge intermediate for extreme aspect ratios.
    return image.resize(
        (size, size),
        resample=Image.Resampling.BICUBIC,
        box=(left, top, left + side, top + side),
        reducing_gap=3.0,
    )


def _pixel_moments(image):
    """Sum and sum of outer products of an RGB image's pixels, on the 0-1 scale. Computed
    on the pixels before JPEG coding, which changes the mean by far less than one level."""
    histogram = np.asarray(image.histogram(), dtype=np.float64).reshape(3, 256)
    pixel_sum = histogram @ np.arange(256.0) / 255.0
    channels = np.asarray(image, dtype=np.uint8).reshape(-1, 3).T.astype(np.int64)
    # Integer dot products: exact, and no BLAS, whose threads would fight the other workers
    # for the cores.
    pixel_outer = np.empty((3, 3))
    for row in range(3):
        for column in range(row, 3):
            product = int(np.dot(channels[row], channels[column]))
            pixel_outer[row, column] = pixel_outer[column, row] = product / 255.0**2
    return pixel_sum, pixel_outer


def process_item(task):
    """Worker entry point: (input_dir, item, settings) -> result dict, never raises."""
    input_dir, item, settings = task
    try:
        image = load_and_crop(
            os.path.join(input_dir, item.relative_path), max_pixels=settings["max_pixels"]
        )
        buffer = io.BytesIO()
        image.save(buffer, format=STORED_FORMAT, quality=settings["jpeg_quality"])
        pixel_sum, pixel_outer = _pixel_moments(image)
        return {
            "item": item,
            "encoded": buffer.getvalue(),
            "pixel_sum": pixel_sum,
            "pixel_outer": pixel_outer,
            "pixel_count": image.width * image.height,
        }
    except ValueError as error:
        return {"item": item, "error": str(error)}
    except Exception as error:  # a bad file must never stop the run
        return {"item": item, "error": f"{type(error).__name__}: {error}"}
