"""Batch augmentations: a registry of stateless, seeded ops on float32 [B,H,W,3].

Each op is `op(images, seed, config) -> images` with pixel values in [0, 255] and
`seed` an int64 [2] tensor. The pipeline folds the op's position into the step's
seed, so the same (seed, step) always gives the same batch, and the next step a
different one. To add an augmentation, register one function:

    @AUGMENTATIONS.register("invert")
    def invert(images, seed, config):
      return 255.0 - images
"""

import math

import tensorflow as tf

from research.registry import Registry

AUGMENTATIONS = Registry("augmentation")


def pipeline(config):
  """The `--augment` ops chained into one `(images, seed) -> images` function."""
  ops = [AUGMENTATIONS.get(name) for name in config.augmentations]

  def apply(images, seed, index=None, epoch=None):
    """`index` (example ids) and `epoch` reach only ops marked `uses_example_ids`."""
    for i, op in enumerate(ops):
      op_seed = tf.random.experimental.stateless_fold_in(seed, i)
      if getattr(op, "uses_example_ids", False):
        images = op(images, op_seed, config, index=index, epoch=epoch)
      else:
        images = op(images, op_seed, config)
    return images

  return apply


def _uniform(seed, shape, low=0.0, high=1.0):
  return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


@AUGMENTATIONS.register("flip")
def flip(images, seed, config):
  """Horizontal flip of a random half of the batch."""
  del config
  do_flip = _uniform(seed, [tf.shape(images)[0]]) < 0.5
  return tf.where(do_flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


@AUGMENTATIONS.register("alternating_flip")
def alternating_flip(images, seed, config, index, epoch):
  """airbench's flip: a random half of the examples in epoch 0, then the other half
  in epoch 1 and so on, so every example is seen both ways in every two epochs."""
  del seed
  # A fixed random bit per example (an integer hash of id and run seed).
  bit = ((tf.cast(index, tf.int64) + 7919 * config.seed) * 2654435761 // 65536) % 2
  do_flip = tf.equal((bit + tf.cast(epoch, tf.int64)) % 2, 1)
  return tf.where(do_flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


alternating_flip.uses_example_ids = True


@AUGMENTATIONS.register("crop")
def crop(images, seed, config):
  """Random crop after reflect-padding by `--crop_padding` (a random translation)."""
  pad = config.crop_padding
  if pad == 0:
    return images
  batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
  offsets = tf.random.stateless_uniform([2, batch], seed=seed, minval=0,
                                        maxval=2 * pad + 1, dtype=tf.int32)
  rows = offsets[0][:, None] + tf.range(height)[None]  # [B, H]
  cols = offsets[1][:, None] + tf.range(width)[None]   # [B, W]
  out = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(out, cols, axis=2, batch_dims=1)


@AUGMENTATIONS.register("cutout")
def cutout(images, seed, config):
  """Fills a random `--cutout_size` square (centre anywhere) with mid-grey."""
  batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
  centre = _uniform(seed, [2, batch])
  cy = tf.cast(centre[0] * height, tf.int32)[:, None]
  cx = tf.cast(centre[1] * width, tf.int32)[:, None]
  half = config.cutout_size // 2
  ys, xs = tf.range(height)[None], tf.range(width)[None]
  in_rows = (ys >= cy - half) & (ys < cy - half + config.cutout_size)  # [B, H]
  in_cols = (xs >= cx - half) & (xs < cx - half + config.cutout_size)  # [B, W]
  hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return tf.where(hole, 127.5, images)


@AUGMENTATIONS.register("tutorial")
def tutorial(images, seed, config):
  """The classic Keras tutorial's augmentation: rotation 15 deg, shift 10%, zoom 10%, flip.

  One projective transform per image, nearest fill as ImageDataGenerator did.
  """
  batch = tf.shape(images)[0]
  height, width = float(images.shape[1]), float(images.shape[2])
  r = _uniform(seed, [4, batch], -1.0, 1.0)
  angle = r[0] * (15.0 * math.pi / 180.0)
  zoom = 1.0 + 0.1 * r[1]
  shift_y, shift_x = r[2] * 0.1 * height, r[3] * 0.1 * width
  # Maps output (x, y) to input: rotate and scale about the centre, then shift.
  cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  a0, a1, b0, b1 = cos, -sin, sin, cos
  a2 = cx - a0 * cx - a1 * cy + shift_x
  b2 = cy - b0 * cx - b1 * cy + shift_y
  zeros = tf.zeros_like(a0)
  transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms,
      output_shape=tf.constant([int(height), int(width)]), fill_value=0.0,
      interpolation="BILINEAR", fill_mode="NEAREST")
  return flip(out, tf.random.experimental.stateless_fold_in(seed, 99), config)
