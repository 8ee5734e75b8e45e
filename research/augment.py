"""Batch augmentations: a registry of stateless, seeded ops on batch dicts.

A batch is a dict of per-example tensors: `image` float32 [B,H,W,3] in [0, 255],
`label` int32 [B], `target` float32 [B,K] (a distribution over classes: one-hot until
an op mixes it) and `index` int32 [B] (example ids). An op is
`op(batch, seed, context) -> batch` with `seed` an int64 [2] tensor and `context` the
run seed, step and epoch. The pipeline folds the op's position into the step's seed,
so the same (seed, step) always gives the same batch, and the next step a different
one. To add one, register a builder whose keyword parameters are its settings:

    @AUGMENTATIONS.register("invert")
    def invert(probability=1.0):          # --augment="crop,invert(probability=0.5)"
      return on_images(lambda images, seed: ...)

Several workers each build only their own share of a global batch (research/data.py)
when every op is `sharded`: it draws its per-example randomness with `uniform`, which
slices one draw over the whole global batch, so an example is augmented the same
however the batch is split. `on_examples` makes such an op; an op that mixes examples
across the batch (mixup) or draws by the batch it is given (`on_images`) is not, and
makes each worker build the whole batch, as on one machine.
"""

import dataclasses
import math

import tensorflow as tf

from research import context as context_lib
from research.registry import Registry

AUGMENTATIONS = Registry("augmentation")


@dataclasses.dataclass(frozen=True)
class Context:
  """What an op may know besides the batch: the run's --seed, the step and its epoch,
  and which examples of the global batch of `batch_size` this batch holds: `size` of
  them from `offset` on (all of them unless the pipeline is sharded)."""
  run_seed: int
  step: tf.Tensor   # int64 scalar
  epoch: tf.Tensor  # int64 scalar
  batch_size: int
  offset: int = 0
  size: int = None  # None: batch_size

  @property
  def share(self):
    return slice(self.offset, self.offset + (self.size or self.batch_size))


def uniform(seed, context, rows=(), low=0, high=1, dtype=tf.float32):
  """Per-example draws [*rows, b] for this batch's b examples: this batch's slice of
  one draw over the global batch (so every worker gives an example the same values)."""
  values = tf.random.stateless_uniform([*rows, context.batch_size], seed=seed,
                                       minval=tf.cast(low, dtype), maxval=tf.cast(high, dtype),
                                       dtype=dtype)
  return values[..., context.share]


class Pipeline:
  """The `--augment` ops chained into one `(batch, seed, context) -> batch`; while they
  are traced, the step context (research/context.py) is the batch's step in a run of
  `total_steps` steps of which `steps_per_epoch` make an epoch."""

  def __init__(self, augment, run_seed, total_steps=1, steps_per_epoch=1):
    self.run_seed = run_seed
    self.ops = [AUGMENTATIONS.build(spec) for spec in AUGMENTATIONS.parse_list(augment)]
    self.sharded = all(getattr(op, "sharded", False) for op in self.ops)
    self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch

  def context(self, step, epoch, batch_size, offset=0, size=None):
    return Context(self.run_seed, step, epoch, batch_size, offset, size)

  def __call__(self, batch, seed, context):
    where = context_lib.StepContext(lambda: context.step, self.total_steps,
                                    self.steps_per_epoch)
    with context_lib.active(where):
      for i, op in enumerate(self.ops):
        batch = op(batch, tf.random.experimental.stateless_fold_in(seed, i), context)
    return batch


def pipeline(augment, run_seed, total_steps=1, steps_per_epoch=1):
  return Pipeline(augment, run_seed, total_steps, steps_per_epoch)


def sharded(op):
  """Marks `op` as drawing its randomness per example with `uniform` (or none)."""
  op.sharded = True
  return op


def needs_size(op, pixels):
  """Marks `op` as needing images of at least `pixels` a side, which its settings alone
  cannot know: flag validation refuses a smaller --image_size."""
  op.min_image_size = pixels
  return op


def on_images(fn):
  """Lifts `fn(images, seed) -> images` to a batch op that leaves labels alone."""
  def op(batch, seed, context):
    del context
    return {**batch, "image": fn(batch["image"], seed)}
  return op


def on_examples(fn):
  """Lifts `fn(images, seed, context) -> images`, which draws with `uniform`, to a
  sharded batch op that leaves labels alone."""
  return sharded(lambda batch, seed, context: {**batch, "image": fn(batch["image"], seed,
                                                                   context)})


def random_flip(images, seed, context):
  """Horizontal flip of a random half of the batch."""
  do_flip = uniform(seed, context) < 0.5
  return tf.where(do_flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


@AUGMENTATIONS.register("flip")
def flip():
  """Horizontal flip of a random half of the batch."""
  return on_examples(random_flip)


@AUGMENTATIONS.register("alternating_flip")
def alternating_flip():
  """airbench's flip: a random half of the examples in epoch 0, then the other half
  in epoch 1 and so on, so every example is seen both ways in every two epochs."""
  @sharded
  def op(batch, seed, context):
    del seed
    # A fixed random bit per example (an integer hash of id and run seed).
    index = tf.cast(batch["index"], tf.int64)
    bit = ((index + 7919 * context.run_seed) * 2654435761 // 65536) % 2
    do_flip = tf.equal((bit + tf.cast(context.epoch, tf.int64)) % 2, 1)
    images = batch["image"]
    return {**batch, "image": tf.where(do_flip[:, None, None, None],
                                       tf.reverse(images, axis=[2]), images)}
  return op


@AUGMENTATIONS.register("crop")
def crop(padding=4):
  """Random crop after reflect-padding by `padding` pixels (a random translation)."""
  if padding < 0:
    raise ValueError(f"crop: padding must be >= 0, got {padding}")

  def fn(images, seed, context):
    if padding == 0:
      return images
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [padding] * 2, [padding] * 2, [0, 0]], mode="REFLECT")
    offsets = uniform(seed, context, [2], 0, 2 * padding + 1, tf.int32)
    rows = offsets[0][:, None] + tf.range(height)[None]  # [B, H]
    cols = offsets[1][:, None] + tf.range(width)[None]   # [B, W]
    out = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(out, cols, axis=2, batch_dims=1)

  return needs_size(on_examples(fn), padding + 1)  # Reflection repeats no edge pixel.


def _boxes(centre, height, width, box_height, box_width):
  """[B, H, W, 1] masks of one box per image, `centre` [2, B] uniform in [0, 1), clipped
  to the image."""
  cy = tf.cast(centre[0] * height, tf.int32)[:, None]
  cx = tf.cast(centre[1] * width, tf.int32)[:, None]
  top, left = cy - box_height // 2, cx - box_width // 2
  ys, xs = tf.range(height)[None], tf.range(width)[None]
  in_rows = (ys >= top) & (ys < top + box_height)  # [B, H]
  in_cols = (xs >= left) & (xs < left + box_width)  # [B, W]
  return in_rows[:, :, None, None] & in_cols[:, None, :, None]


@AUGMENTATIONS.register("cutout")
def cutout(size=8):
  """Fills a random `size` x `size` square (centre anywhere) with mid-grey."""
  if size < 1:
    raise ValueError(f"cutout: size must be >= 1, got {size}")

  def fn(images, seed, context):
    centre = uniform(seed, context, [2])
    hole = _boxes(centre, images.shape[1], images.shape[2], size, size)
    return tf.where(hole, 127.5, images)

  return needs_size(on_examples(fn), size)


@AUGMENTATIONS.register("tutorial")
def tutorial():
  """The classic Keras tutorial's augmentation: rotation 15 deg, shift 10%, zoom 10%, flip.

  One projective transform per image, nearest fill as ImageDataGenerator did.
  """
  def fn(images, seed, context):
    height, width = float(images.shape[1]), float(images.shape[2])
    r = uniform(seed, context, [4], -1.0, 1.0)
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
    return random_flip(out, tf.random.experimental.stateless_fold_in(seed, 99), context)

  return on_examples(fn)
