"""What an image's header says before any pixel is decoded: its format and size, and for a
GIF the pixels of all its frames, as TensorFlow ops; `checked_image_bytes` refuses an empty
file, an unknown format and an image above a pixel limit. The export's signatures and
`predict.py` check every image with it, so an oversize image is refused before the decoder
allocates anything.
"""

import tensorflow as tf

_HEADER_BYTES = 32  # every size field below lies in the first 30 bytes


def _header_fields(image_bytes):
    """The first _HEADER_BYTES bytes as int64 values, zero-padded when the input is shorter."""
    head = tf.io.decode_raw(tf.strings.substr(image_bytes, 0, _HEADER_BYTES), tf.uint8)
    head = tf.pad(head, [[0, _HEADER_BYTES - tf.size(head)]])
    return tf.cast(head, tf.int64)


def _little_endian(head, start, length):
    return sum(head[start + index] * 256**index for index in range(length))


def _big_endian(head, start, length):
    return sum(head[start + index] * 256 ** (length - 1 - index) for index in range(length))


def _starts_with(head, offset, signature):
    return tf.reduce_all(
        tf.equal(head[offset : offset + len(signature)], tf.constant(list(signature), tf.int64))
    )


def image_size_from_header(image_bytes):
    """(height, width) of an encoded JPEG, PNG, GIF, BMP or WebP image, read from its header
    without decoding it; (-1, -1) for bytes in no supported format. int64 scalars."""
    head = _header_fields(image_bytes)

    def jpeg():
        # Parses the markers up to the frame header; fails InvalidArgument when it is not
        # there (a JPEG cut before its size).
        shape = tf.cast(tf.io.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0], shape[1]

    def png():  # IHDR: width and height, big-endian uint32 at bytes 16-23
        return _big_endian(head, 20, 4), _big_endian(head, 16, 4)

    def gif():  # logical screen: width and height, little-endian uint16 at bytes 6-9
        return _little_endian(head, 8, 2), _little_endian(head, 6, 2)

    def bmp():  # BITMAPINFOHEADER: int32 width and height (negative: top-down rows)
        width, height = _little_endian(head, 18, 4), _little_endian(head, 22, 4)
        height = tf.where(height >= 2**31, 2**32 - height, height)
        return height, width

    def webp():
        chunk = head[12:16]

        def lossy():  # 'VP8 ': 14-bit width and height at bytes 26-29
            return _little_endian(head, 28, 2) % 2**14, _little_endian(head, 26, 2) % 2**14

        def lossless():  # 'VP8L': 14-bit width - 1 and height - 1 packed from byte 21
            bits = _little_endian(head, 21, 4)
            return (bits // 2**14) % 2**14 + 1, bits % 2**14 + 1

        def extended():  # 'VP8X': 24-bit canvas width - 1 and height - 1 at bytes 24-29
            return _little_endian(head, 27, 3) + 1, _little_endian(head, 24, 3) + 1

        return tf.case(
            [
                (_starts_with(chunk, 0, b"VP8 "), lossy),
                (_starts_with(chunk, 0, b"VP8L"), lossless),
                (_starts_with(chunk, 0, b"VP8X"), extended),
            ],
            default=_unknown,
        )

    is_webp = tf.logical_and(_starts_with(head, 0, b"RIFF"), _starts_with(head, 8, b"WEBP"))
    return tf.case(
        [
            (_starts_with(head, 0, b"\xff\xd8\xff"), jpeg),
            (_starts_with(head, 0, b"\x89PNG\r\n\x1a\n"), png),
            (_starts_with(head, 0, b"GIF8"), gif),
            (_starts_with(head, 0, b"BM"), bmp),
            (is_webp, webp),
        ],
        default=_unknown,
        exclusive=False,
    )


def _unknown():
    return tf.constant(-1, tf.int64), tf.constant(-1, tf.int64)


_GIF_IMAGE, _GIF_EXTENSION = 0x2C, 0x21  # the bytes that start a GIF's blocks


def gif_frame_pixels(image_bytes):
    """(frames, pixels) of a GIF: its image descriptors and the sum of their width x height,
    found by walking its blocks without decoding them. The decoder reads every frame's raster
    (one byte a pixel, at the frame's own size) before it keeps the first, so this sum, not
    the logical screen, is what a GIF costs. The walk stops at the trailer, at the end of the
    bytes or at a byte that starts no block, as the decoder does. int64 scalars."""
    # The bytes, and -1 after them, which every position past the end reads.
    data = tf.concat([tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.int64), [-1]], 0)
    size = tf.size(data, out_type=tf.int64) - 1

    def byte(position):
        return tf.gather(data, tf.minimum(tf.cast(position, tf.int64), size))

    def color_table(packed):  # bytes of the color table a packed field announces
        return tf.where(packed >= 128, 3 * 2 ** (packed % 8 + 1), 0)

    def after_sub_blocks(position):
        # Each sub-block: its size, then that many bytes; size 0 ends the block's data.
        (end,) = tf.while_loop(lambda at: byte(at) > 0, lambda at: [at + 1 + byte(at)], [position])
        return end + 1

    def block(position, frames, pixels, done):
        # `introducer` starts an image, an extension, or anything else (the trailer, the end
        # of the bytes, garbage) that ends the walk.
        introducer = byte(position)
        image, extension = tf.equal(introducer, _GIF_IMAGE), tf.equal(introducer, _GIF_EXTENSION)
        # Image descriptor: separator, left, top, width, height (little-endian uint16), a
        # packed field; then the local color table, the LZW code size and the sub-blocks.
        width, height = (
            tf.maximum(byte(position + offset), 0)
            + 256 * tf.maximum(byte(position + offset + 1), 0)
            for offset in (5, 7)
        )
        data_start = tf.where(
            image, position + 10 + color_table(byte(position + 9)) + 1, position + 2
        )
        return (
            tf.cond(image | extension, lambda: after_sub_blocks(data_start), lambda: position),
            frames + tf.cast(image, tf.int64),
            pixels + tf.where(image, width * height, 0),
            ~(image | extension),
        )

    # After the header, the logical screen descriptor and the global color table.
    start = 13 + color_table(byte(10))
    _, frames, pixels, _ = tf.while_loop(
        lambda position, frames, pixels, done: ~done,
        block,
        (start, tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(False)),
    )
    return frames, pixels


def checked_image_bytes(image_bytes, max_pixels):
    """`image_bytes` again, available only after its header was checked: a supported
    format, at most `max_pixels` pixels. Whatever consumes the result (the decoder) runs
    after the checks, so an oversize image is refused before any pixel is allocated."""
    height, width = image_size_from_header(image_bytes)
    checks = [
        tf.debugging.Assert(tf.strings.length(image_bytes) > 0, ["empty image bytes"]),
        tf.debugging.Assert(
            height > 0,
            [
                "not a JPEG, PNG, GIF, BMP or WebP image, or a header with a zero size; first "
                "bytes:",
                tf.strings.substr(image_bytes, 0, 8),
            ],
        ),
        tf.debugging.Assert(
            height * width <= max_pixels,
            [
                tf.strings.format(
                    "image of {} x {} pixels is above the limit of this export, {} pixels",
                    (height, width, max_pixels),
                )
            ],
        ),
    ]
    # A GIF's frames are all decoded: their pixels together count (after the screen's check,
    # so that a GIF above the limit by its screen alone is refused without the walk).
    with tf.control_dependencies(checks):
        frames, frame_pixels = tf.cond(
            tf.equal(tf.strings.substr(image_bytes, 0, 4), b"GIF8"),
            lambda: gif_frame_pixels(image_bytes),
            lambda: (tf.constant(1, tf.int64), height * width),
        )
    checks.append(
        tf.debugging.Assert(
            frame_pixels <= max_pixels,
            [
                tf.strings.format(
                    "GIF of {} frames with {} pixels in all is above the limit of this export, {} pixels",
                    (frames, frame_pixels, max_pixels),
                )
            ],
        )
    )
    with tf.control_dependencies(checks):
        return tf.identity(image_bytes)
