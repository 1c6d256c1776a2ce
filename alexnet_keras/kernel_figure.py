"""The paper's Figure 3: the learned conv1 kernels as a grid of RGB tiles, each kernel scaled
to its own range, the kernels read by conv2's first group in the top rows and the second
group's below (in the paper, the first group's came out largely colour-agnostic, the
second's colour-specific). Also the same grid as a TensorBoard image during training."""

import dataclasses

import numpy as np
import tensorflow as tf

from alexnet_keras_base.errors import UsageError
from alexnet_keras_base.files import replaced_atomically

KERNELS_FILE = "conv1_kernels.png"
KERNELS_TAG = "conv1_kernels"  # the TensorBoard image's
KERNEL_TILE_SCALE = 4  # an 11x11 kernel becomes a 44x44-pixel tile
KERNEL_COLUMNS = 16  # the paper's figure: 3 rows of 16 kernels per group
TILE_GAP = 2  # pixels between tiles
GROUP_GAP = 14  # pixels between the groups' blocks of rows
MARGIN = 10
BACKGROUND = 255


def _numpy(variable):
    import keras

    return keras.ops.convert_to_numpy(variable)


def named_layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        raise UsageError(
            f"model {model.name!r} has no {name} layer: the figures need the "
            f"AlexNet of build_alexnet"
        ) from None


def conv1_channel_groups(model):
    """conv1's output channels as conv2's groups read them: [(start, stop), ...], one pair per
    group (conv1 -> norm1 -> pool1 keep the channel order)."""
    conv1, conv2 = named_layer(model, "conv1"), named_layer(model, "conv2")
    channels = int(conv1.kernel.shape[-1])
    groups = int(getattr(conv2, "groups", 1))
    size = channels // groups
    return [(group * size, (group + 1) * size) for group in range(groups)]


def normalized_kernels(kernel):
    """(height, width, 3, channels) weights -> (channels, height, width, 3) in [0, 1], each
    kernel scaled from its own minimum to its own maximum (a flat kernel becomes mid grey)."""
    tiles = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)


def colour_share(kernel):
    """Per kernel, the share of its variance that differs between the RGB channels: 0 for a
    grey-level kernel (the same pattern in R, G and B), near 1 for a colour-opponent one."""
    tiles = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)  # (channels, h, w, 3)
    centred = tiles - tiles.mean(axis=(1, 2, 3), keepdims=True)
    colour = centred - centred.mean(axis=-1, keepdims=True)
    total = (centred**2).sum(axis=(1, 2, 3))
    return np.where(total > 0, (colour**2).sum(axis=(1, 2, 3)) / np.where(total > 0, total, 1), 0.0)


@dataclasses.dataclass
class KernelGrid:
    """The conv1 kernels laid out as the paper's Figure 3."""

    image: np.ndarray  # uint8 (height, width, 3), no caption
    tile_origins: list  # (top, left) of channel c's tile, in channel order
    tile_size: int
    groups: list  # conv1_channel_groups
    caption: str


def kernel_grid(model, columns=KERNEL_COLUMNS, scale=KERNEL_TILE_SCALE):
    """-> KernelGrid: channel c's kernel at tile_origins[c], row-major within its group, each
    group's tiles in their own block of rows, the first group's on top."""
    kernel = _numpy(named_layer(model, "conv1").kernel)  # (11, 11, 3, channels)
    groups = conv1_channel_groups(model)
    tiles = normalized_kernels(kernel)
    tile_height, tile_width = kernel.shape[0] * scale, kernel.shape[1] * scale
    columns = min(columns, max(stop - start for start, stop in groups))
    origins = []
    top = 0
    for start, stop in groups:
        for position in range(stop - start):
            row, column = divmod(position, columns)
            origins.append((top + row * (tile_height + TILE_GAP), column * (tile_width + TILE_GAP)))
        rows = -(-(stop - start) // columns)
        top += rows * (tile_height + TILE_GAP) - TILE_GAP + GROUP_GAP
    height = top - GROUP_GAP
    width = columns * (tile_width + TILE_GAP) - TILE_GAP
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    for (tile_top, tile_left), tile in zip(origins, tiles):
        pixels = np.round(255 * tile).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        image[tile_top : tile_top + tile_height, tile_left : tile_left + tile_width] = pixels
    return KernelGrid(
        image, origins, tile_height, groups, _kernel_caption(model, kernel, groups, tiles.shape[0])
    )


def _kernel_caption(model, kernel, groups, count):
    shares = colour_share(kernel)
    height, width, depth, _ = kernel.shape
    lines = [
        f"{model.name}: the {count} conv1 kernels ({height}x{width}x{depth}), each "
        f"scaled to its own range"
    ]
    for number, (start, stop) in enumerate(groups, 1):
        where = "top" if number == 1 else "below" if len(groups) == 2 else f"block {number}"
        lines.append(
            f"{where}: channels {start}-{stop - 1}, read by conv2's group {number}; "
            f"colour share of variance {shares[start:stop].mean():.2f}"
        )
    return "\n".join(lines)


def write_kernel_figure(model, path):
    """conv1_kernels.png: the kernel grid with its caption beneath; -> the KernelGrid."""
    from PIL import Image, ImageDraw, ImageFont

    grid = kernel_grid(model)
    font = ImageFont.load_default(size=13)
    lines = grid.caption.splitlines()
    line_height = 17
    text_width = max(int(font.getlength(line)) for line in lines)
    width = max(grid.image.shape[1], text_width) + 2 * MARGIN
    height = grid.image.shape[0] + 3 * MARGIN + line_height * len(lines)
    canvas = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    canvas.paste(Image.fromarray(grid.image), (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)
    for number, line in enumerate(lines):
        draw.text(
            (MARGIN, grid.image.shape[0] + 2 * MARGIN + number * line_height),
            line,
            fill=(0, 0, 0),
            font=font,
        )
    with replaced_atomically(path) as temporary:
        canvas.save(temporary, format="PNG")
    return grid


def log_conv1_kernels(model, summary_writer, step):
    """Logs the kernel grid as the TensorBoard image KERNELS_TAG (caption as its
    description) at `step`; -> the KernelGrid."""
    grid = kernel_grid(model)
    with summary_writer.as_default():
        tf.summary.image(KERNELS_TAG, grid.image[np.newaxis], step=step, description=grid.caption)
    summary_writer.flush()
    return grid
