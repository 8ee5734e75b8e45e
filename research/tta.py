"""Test-time augmentation: logits averaged over flipped and translated views.

Used by the loop's evaluation and by scripts/evaluate.py, so a run is scored the
same way everywhere (`--tta`, saved in the run's config.json).
"""

import tensorflow as tf


def _flip(images):
  return tf.reverse(images, axis=[2])


def _shift(images, pixels):
  """Translates by `pixels` down and right (negative: up and left), reflect-padded."""
  pad = abs(pixels)
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  start = pad - pixels
  return padded[:, start:start + images.shape[1], start:start + images.shape[2], :]


def predict(model, images, mode):
  """float32 logits of `model` on `images` under TTA `mode` (none|flip|flip_translate)."""
  logits = lambda x: tf.cast(model(x, training=False), tf.float32)
  if mode == "none":
    return logits(images)
  mirrored = lambda x: 0.5 * (logits(x) + logits(_flip(x)))
  if mode == "flip":
    return mirrored(images)
  # airbench94's level 2: half the weight on the mirrored pair, half on the mirrored
  # pairs of the two 1-pixel diagonal shifts (6 forward passes).
  shifted = 0.5 * (mirrored(_shift(images, 1)) + mirrored(_shift(images, -1)))
  return 0.5 * mirrored(images) + 0.5 * shifted
