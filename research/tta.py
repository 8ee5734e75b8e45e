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
  plain = 0.5 * (logits(images) + logits(_flip(images)))
  if mode == "flip":
    return plain
  # airbench94's level 2: half the weight on the plain pair, half on 1-pixel shifts.
  shifted = 0.5 * (logits(_shift(images, 1)) + logits(_flip(_shift(images, -1))))
  return 0.5 * plain + 0.5 * shifted
