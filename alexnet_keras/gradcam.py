"""Grad-CAM (Selvaraju et al., 2017): where in an image the network found its top-1 class.

The gradient of the top-1 class's logit with respect to conv5's output, averaged over the
13x13 positions, weights conv5's channels; the ReLU of the weighted sum, divided by its
maximum, is the heatmap (as the keras.io Grad-CAM example computes it). `overlay` draws it on
the image with a caption, `write_explanation` saves that as a PNG.
"""

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from alexnet_keras_base.files import replaced_atomically

HEATMAP_OPACITY = 0.45  # the colour map's share of each overlaid pixel
CAPTION_FONT_SIZE = 14


class GradCam:
    """Grad-CAM heatmaps of a model whose output is fc8's logits (`build_alexnet`'s)."""

    def __init__(self, model, layer_name="conv5"):
        layer = model.get_layer(layer_name)
        # One forward pass gives both what the heatmap weighs and what it explains.
        self.feature_model = keras.Model(
            model.input, [layer.output, model.output], name=f"{model.name}_gradcam"
        )
        self._explain = tf.function(self._explain_batch, reduce_retracing=True)

    def _explain_batch(self, images):
        with tf.GradientTape() as tape:
            features, logits = self.feature_model(images, training=False)
            logits = tf.cast(logits, tf.float32)
            classes = tf.argmax(logits, axis=-1, output_type=tf.int32)  # ties: lower index
            top_logits = tf.gather(logits, classes, batch_dims=1)
        # Each image's logit depends on its own features only: the gradient of the sum is
        # every image's own gradient. Under mixed precision both are float16.
        gradients = tf.cast(tape.gradient(top_logits, features), tf.float32)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2))  # (batch, channels)
        heatmaps = weighted_heatmaps(tf.cast(features, tf.float32), channel_weights)
        scores = tf.gather(tf.nn.softmax(logits), classes, batch_dims=1)
        return heatmaps, classes, scores

    def explain(self, images):
        """float32 pixels (batch, 227, 227, 3) in [0, 255] -> (heatmaps float32 (batch, 13,
        13) in [0, 1], top-1 classes int (batch,), their softmax probabilities (batch,))."""
        heatmaps, classes, scores = self._explain(tf.cast(images, tf.float32))
        return heatmaps.numpy(), classes.numpy(), scores.numpy()


def weighted_heatmaps(features, channel_weights):
    """ReLU(sum over channels of weight * feature map), each map divided by its maximum (all
    zeros when that is 0): features (batch, height, width, channels), channel_weights
    (batch, channels) -> (batch, height, width)."""
    weighted = tf.einsum("bhwc,bc->bhw", features, channel_weights)
    positive = tf.nn.relu(weighted)
    return tf.math.divide_no_nan(positive, tf.reduce_max(positive, axis=(1, 2), keepdims=True))


def jet(values):
    """The jet colour map (blue, cyan, yellow, red) of values in [0, 1] -> uint8 RGB."""
    values = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], np.float32)  # where red, green and blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (values - centres)), 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def upsampled(heatmap, width, height):
    """A heatmap resized to width x height, bilinearly, still in [0, 1]."""
    resized = Image.fromarray(np.asarray(heatmap, np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized), 0.0, 1.0)


def overlay(image, heatmap, caption):
    """The uint8 RGB image (height, width, 3) blended with its heatmap in the jet colours,
    `caption` in a dark box at the top left -> PIL.Image."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"overlay takes a uint8 RGB image (height, width, 3), got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    colours = jet(upsampled(heatmap, width, height)).astype(np.float32)
    blended = (1 - HEATMAP_OPACITY) * image.astype(np.float32) + HEATMAP_OPACITY * colours
    picture = Image.fromarray(np.round(blended).astype(np.uint8))
    if caption:
        draw = ImageDraw.Draw(picture)
        font = ImageFont.load_default(CAPTION_FONT_SIZE)
        left, top, right, bottom = draw.multiline_textbbox((4, 4), caption, font=font)
        draw.rectangle((0, 0, right + 4, bottom + 4), fill=(0, 0, 0))
        draw.multiline_text((4, 4), caption, fill=(255, 255, 255), font=font)
    return picture


def write_explanation(path, image, heatmap, caption):
    """Writes `overlay(image, heatmap, caption)` to `path` as a PNG, whole or not at all."""
    with replaced_atomically(path) as temporary:
        overlay(image, heatmap, caption).save(temporary, format="PNG")
    return path
