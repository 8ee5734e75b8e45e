"""The augmentation policies papers compare against: RandAugment, TrivialAugment, AugMix
and random erasing, as sharded batch ops.

    --augment="crop,flip,randaugment(num_ops=2, magnitude=9)"
    --augment="crop,flip,trivial_augment"      --augment="crop,flip,augmix"
    --augment="crop,flip,random_erasing(probability=0.5)"

(after the crop and flip, as the papers' CIFAR recipes).

Each image op (`OPS`) follows PIL's definition on uint8 images (Image.transform and
rotate, ImageEnhance, ImageOps), as torchvision applies it: images are rounded to the
uint8 grid first and results floored or rounded where PIL truncates or rounds, so
tests/test_policies.py compares every op with PIL's. `apply` partitions the batch by op
and computes each op on its part at once (the geometric ones as one projective transform
with a matrix per example), no per-example loop. Every draw is per example through
`augment.uniform` (one draw over the global batch, sliced), so the policies are sharded
and stateless by (seed, step, example): a resumed run gets the same batches.
keras.layers.RandAugment draws from a stateful SeedGenerator and picks one list of ops
for the whole batch, so it cannot be seeded per example; the ops are written here.
"""

import math

import numpy as np
import tensorflow as tf

from research.augment import AUGMENTATIONS, on_examples, uniform

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate",
       "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
       "autocontrast", "equalize")
_GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
_ENHANCE = ("brightness", "color", "contrast", "sharpness")


def apply(images, op, magnitude, interpolation="NEAREST"):
  """Image i with op `OPS[op[i]]` applied at `magnitude[i]` (signed, in the op's unit:
  shear factor, pixels (truncated), degrees counter-clockwise, enhance factor - 1,
  bits kept, solarize threshold; unused by the others). Off-image pixels are 0 (black),
  torchvision's default fill. The batch is partitioned by op, each op computed on its
  part (the geometric ones together) and the parts stitched back in order."""
  images = tf.clip_by_value(tf.round(images), 0.0, 255.0)
  op, magnitude = tf.convert_to_tensor(op, tf.int32), tf.cast(magnitude, tf.float32)
  group = tf.gather(tf.constant([_group_of(name) for name in OPS], tf.int32), op)
  part = lambda x: tf.dynamic_partition(x, group, len(_GROUPS))
  parts = zip(part(images), part(op), part(magnitude))
  outs = [fn(x, o, m[:, None, None, None], interpolation) for fn, (x, o, m) in zip(
      _GROUPS.values(), parts)]
  out = tf.dynamic_stitch(part(tf.range(tf.shape(op)[0])), outs)
  out.set_shape(images.shape)
  return out


def _blend(degenerate, images, factor):
  """Image.blend(degenerate, image, factor), ImageEnhance's step: truncated to uint8."""
  return tf.clip_by_value(tf.floor(degenerate + factor * (images - degenerate)), 0.0, 255.0)


# Each op, or group of ops computed together: fn(images, op, magnitude [B, 1, 1, 1],
# interpolation) -> images.
_GROUPS = {
    ("identity",): lambda x, op, m, interpolation: x,
    _GEOMETRIC: lambda x, op, m, interpolation: _geometric(x, op, m[:, 0, 0, 0],
                                                           interpolation),
    ("brightness",): lambda x, op, m, interpolation: _blend(0.0, x, 1.0 + m),
    ("color",): lambda x, op, m, interpolation: _blend(_grey(x), x, 1.0 + m),
    ("contrast",): lambda x, op, m, interpolation: _blend(_mean_grey(x), x, 1.0 + m),
    ("sharpness",): lambda x, op, m, interpolation: _blend(_smooth(x), x, 1.0 + m),
    ("posterize",): lambda x, op, m, interpolation: _posterize(x, m),
    ("solarize",): lambda x, op, m, interpolation: tf.where(x >= m, 255.0 - x, x),
    ("autocontrast",): lambda x, op, m, interpolation: _autocontrast(x),
    ("equalize",): lambda x, op, m, interpolation: _equalize(x),
}


def _group_of(name):
  return next(i for i, names in enumerate(_GROUPS) if name in names)


def _geometric(images, op, magnitude, interpolation):
  """PIL's affine maps (output -> input, continuous coordinates, pixel i covering
  [i, i + 1)): ShearX (1, m, 0, 0, 1, 0), ShearY (1, 0, 0, m, 1, 0), a translation by
  whole pixels, Image.rotate about (W/2, H/2); TF samples at pixel centres, hence the
  half-pixel shifts."""
  height, width = images.shape[1], images.shape[2]
  is_op = lambda name: tf.equal(op, OPS.index(name))
  ones, zeros = tf.ones_like(magnitude), tf.zeros_like(magnitude)
  shift = tf.sign(magnitude) * tf.floor(tf.abs(magnitude))  # torchvision's int().
  angle = -magnitude * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = width / 2.0, height / 2.0
  rotate = is_op("rotate")
  a = tf.where(rotate, cos, ones)
  b = tf.where(rotate, sin, tf.where(is_op("shear_x"), magnitude, zeros))
  c = tf.where(rotate, cx - a * cx - b * cy, tf.where(is_op("translate_x"), -shift, zeros))
  d = tf.where(rotate, -sin, tf.where(is_op("shear_y"), magnitude, zeros))
  e = a
  f = tf.where(rotate, cy - d * cx - e * cy, tf.where(is_op("translate_y"), -shift, zeros))
  transforms = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5,
                         zeros, zeros], axis=1)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=tf.constant([height, width]),
      fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")
  return tf.round(out)


def _grey(images):
  """convert("L"): ITU-R 601-2 luma in PIL's fixed point, [B, H, W, 1]."""
  weights = tf.constant([19595.0, 38470.0, 7471.0])
  return tf.floor((tf.reduce_sum(images * weights, -1, keepdims=True) + 32768.0) / 65536.0)


def _mean_grey(images):
  """ImageEnhance.Contrast's grey: the rounded mean of the image's luma, [B, 1, 1, 1]."""
  return tf.floor(tf.reduce_mean(_grey(images), [1, 2, 3], keepdims=True) + 0.5)


def _smooth(images):
  """ImageFilter.SMOOTH (3x3, 5 at the centre and 1 around, over 13), the border kept."""
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.round(tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME"))
  height, width = images.shape[1], images.shape[2]
  inside = (tf.range(height)[:, None] > 0) & (tf.range(height)[:, None] < height - 1) & (
      tf.range(width)[None] > 0) & (tf.range(width)[None] < width - 1)
  return tf.where(inside[None, :, :, None], smooth, images)


def _posterize(images, bits):
  """ImageOps.posterize: keeps the top `bits` bits of each value."""
  step = tf.pow(2.0, 8.0 - bits)
  return tf.floor(images / step) * step


def _autocontrast(images):
  """ImageOps.autocontrast: each channel stretched to [0, 255], truncated (its table
  computed in float64 as PIL's Python does); a constant channel kept."""
  low = tf.cast(tf.reduce_min(images, [1, 2]), tf.float64)[..., None]  # [B, 3, 1]
  high = tf.cast(tf.reduce_max(images, [1, 2]), tf.float64)[..., None]
  scale = tf.math.divide_no_nan(tf.constant(255.0, tf.float64), high - low)
  levels = tf.range(256, dtype=tf.float64)
  lut = tf.where(high > low, tf.clip_by_value(tf.floor(levels * scale + -low * scale), 0, 255),
                 levels)
  return _lookup(_table_index(images), lut)


def _equalize(images):
  """ImageOps.equalize per channel: with `step` = (pixels - the top value's count) // 256,
  value v becomes (step // 2 + pixels below v) // step, at most 255 (as Image.point
  clips its table); unchanged where `step` is 0."""
  index, size = _table_index(images), tf.shape(images)[0]
  histogram = tf.reshape(tf.math.bincount(index, minlength=size * 768, maxlength=size * 768),
                         [size, 3, 256])
  top = tf.gather(histogram, tf.cast(tf.reduce_max(images, [1, 2]), tf.int32), batch_dims=2)
  step = ((images.shape[1] * images.shape[2] - top) // 256)[..., None]  # [B, 3, 1]
  below = tf.cumsum(histogram, -1, exclusive=True)
  lut = tf.where(step > 0, tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255),
                 tf.range(256))
  return _lookup(index, lut)


def _table_index(images):
  """[B, H, W, 3] int32: where each value is in per-(image, channel) tables of 256,
  flattened."""
  image, channel = tf.range(tf.shape(images)[0])[:, None, None, None], tf.range(3)
  return (image * 3 + channel) * 256 + tf.cast(images, tf.int32)


def _lookup(index, lut):
  """The float32 images of entries `index` of the tables `lut` [B, 3, 256]."""
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.float32)


# --- policies --------------------------------------------------------------------


def _spaces(bins, height, width, wide):
  """[(op, magnitudes [bins], signed)]: torchvision's RandAugment space, or with `wide`
  TrivialAugmentWide's (its translations are 32 pixels whatever the image size)."""
  top = lambda value: np.linspace(0.0, value, bins)
  enhance = top(0.99 if wide else 0.9)
  posterize = 8 - np.round(np.arange(bins) / ((bins - 1) / (6 if wide else 4)))
  return [("identity", top(0.0), False),
          ("shear_x", top(0.99 if wide else 0.3), True),
          ("shear_y", top(0.99 if wide else 0.3), True),
          ("translate_x", top(32.0 if wide else 150.0 / 331.0 * width), True),
          ("translate_y", top(32.0 if wide else 150.0 / 331.0 * height), True),
          ("rotate", top(135.0 if wide else 30.0), True),
          ("brightness", enhance, True), ("color", enhance, True),
          ("contrast", enhance, True), ("sharpness", enhance, True),
          ("posterize", posterize, False), ("solarize", np.linspace(255.0, 0.0, bins), False),
          ("autocontrast", top(0.0), False), ("equalize", top(0.0), False)]


def _draw_ops(seed, context, space, level=None):
  """(op [b] into OPS, signed magnitude [b]): an op uniform over `space` at its bin
  `level` (None: a uniform random bin), negated for signed ops with probability 1/2."""
  names, table, signed = zip(*space)
  draw = lambda i, *args: uniform(tf.random.experimental.stateless_fold_in(seed, i),
                                  context, (), *args)
  pick = draw(0, 0, len(space), tf.int32)
  bins = (draw(1, 0, len(table[0]), tf.int32) if level is None
          else tf.fill(tf.shape(pick), level))
  magnitude = tf.gather_nd(tf.constant(np.stack(table), tf.float32),
                           tf.stack([pick, bins], -1))
  negate = (draw(2) < 0.5) & tf.gather(tf.constant(signed), pick)
  op = tf.gather(tf.constant([OPS.index(name) for name in names], tf.int32), pick)
  return op, tf.where(negate, -magnitude, magnitude)


@AUGMENTATIONS.register("randaugment")
def randaugment(num_ops=2, magnitude=9, num_magnitude_bins=31):
  """RandAugment (Cubuk et al., 2020): `num_ops` ops each, `magnitude` of 0..bins-1.

  torchvision's version: 14 ops (identity, shear/translate x/y, rotate, brightness,
  color, contrast, sharpness, posterize, solarize, autocontrast, equalize) drawn
  uniformly with replacement per image, all at the bin `magnitude` of
  `num_magnitude_bins` = 31 (the paper's scale of 10 is bins=11); shears up to 0.3,
  translations up to 150/331 of the side, rotations up to 30 degrees, enhance factors
  1 +- 0.9, posterize 8..4 bits, solarize threshold 255..0; nearest resampling.
  """
  if not (isinstance(num_ops, int) and num_ops >= 0):
    raise ValueError(f"randaugment: num_ops must be an integer >= 0, got {num_ops}")
  if num_magnitude_bins < 2:
    raise ValueError(f"randaugment: num_magnitude_bins must be >= 2, got {num_magnitude_bins}")
  if not 0 <= magnitude < num_magnitude_bins:
    raise ValueError(f"randaugment: magnitude must be in [0, {num_magnitude_bins - 1}] "
                     f"(of num_magnitude_bins={num_magnitude_bins}), got {magnitude}")

  def fn(images, seed, context):
    space = _spaces(num_magnitude_bins, images.shape[1], images.shape[2], wide=False)
    for layer in range(num_ops):
      op, value = _draw_ops(tf.random.experimental.stateless_fold_in(seed, layer), context,
                            space, magnitude)
      images = apply(images, op, value)
    return images

  return on_examples(fn)


@AUGMENTATIONS.register("trivial_augment")
def trivial_augment(num_magnitude_bins=31):
  """TrivialAugment Wide (Muller & Hutter, 2021): one op per image at a uniform random
  magnitude bin.

  torchvision's TrivialAugmentWide: RandAugment's 14 ops with the "wide" ranges
  (shears up to 0.99, translations up to 32 pixels, rotations up to 135 degrees, enhance
  factors 1 +- 0.99, posterize 8..2 bits, solarize 255..0), nearest resampling.
  """
  if num_magnitude_bins < 2:
    raise ValueError(f"trivial_augment: num_magnitude_bins must be >= 2, got "
                     f"{num_magnitude_bins}")

  def fn(images, seed, context):
    space = _spaces(num_magnitude_bins, images.shape[1], images.shape[2], wide=True)
    op, value = _draw_ops(seed, context, space)
    return apply(images, op, value)

  return on_examples(fn)


def _gamma(seed, context, rows, alpha):
  """Per-example Gamma(alpha) draws [*rows, b], sliced from one draw over the global
  batch as `augment.uniform` does, so AugMix's weights are sharded too."""
  values = tf.random.stateless_gamma([*rows, context.batch_size], seed=seed, alpha=alpha)
  return values[..., context.share]


def _augmix_ops(severity, size, all_ops):
  """[(op, magnitude of the level in [0.1, severity] out of 10, signed)]: AugMix's
  reference operations (augmentations.py), the colour ones only with `all_ops`."""
  whole = lambda top: lambda level: tf.floor(level * top / 10.0)
  ops = [("autocontrast", tf.zeros_like, False), ("equalize", tf.zeros_like, False),
         ("posterize", lambda level: 4.0 - whole(4.0)(level), False),
         ("rotate", whole(30.0), True),
         ("solarize", lambda level: 256.0 - whole(256.0)(level), False),
         ("shear_x", lambda level: level * 0.3 / 10.0, True),
         ("shear_y", lambda level: level * 0.3 / 10.0, True),
         ("translate_x", whole(size / 3.0), True), ("translate_y", whole(size / 3.0), True)]
  enhance = lambda level: level * 1.8 / 10.0 + 0.1 - 1.0  # A factor in [0.1, 1.9].
  return ops + [(name, enhance, False) for name in _ENHANCE] * all_ops


@AUGMENTATIONS.register("augmix")
def augmix(severity=3, width=3, depth=-1, alpha=1.0, all_ops=False):
  """AugMix (Hendrycks et al., 2020): `width` chains of 1-3 ops mixed, then with the image.

  As the paper's reference code: chain i applies `depth` ops (-1: 1 to 3 at random),
  each uniform over autocontrast, equalize, posterize, rotate, solarize, shear x/y and
  translate x/y (`all_ops` adds brightness, color, contrast and sharpness, which
  overlap ImageNet-C's corruptions) at a level uniform in [0.1, `severity`] of 10,
  bilinear resampling; the image is (1 - m) x + m sum_i w_i chain_i(x) with
  w ~ Dirichlet(alpha) and m ~ Beta(alpha, alpha), per image. The paper's Jensen-Shannon
  consistency loss (which needs two AugMix views per image) is not included.
  """
  if not 1 <= severity <= 10:
    raise ValueError(f"augmix: severity must be in [1, 10], got {severity}")
  if width < 1:
    raise ValueError(f"augmix: width must be >= 1, got {width}")
  if depth == 0 or depth < -1:
    raise ValueError(f"augmix: depth must be -1 (1 to 3 at random) or >= 1, got {depth}")
  if not alpha > 0:
    raise ValueError(f"augmix: alpha must be > 0, got {alpha}")
  layers = depth if depth > 0 else 3

  def fn(images, seed, context):
    ops = _augmix_ops(severity, min(images.shape[1], images.shape[2]), all_ops)
    draw = lambda i, *args: uniform(tf.random.experimental.stateless_fold_in(seed, i),
                                    context, *args)
    chain_depth = draw(0, [width], 1, 4, tf.int32)
    chains = tf.concat([images] * width, 0)  # [width * b, ...], chain-major.
    for layer in range(layers):
      pick = draw(10 + 3 * layer, [width], 0, len(ops), tf.int32)
      level = draw(11 + 3 * layer, [width], 0.1, severity)
      values = tf.stack([of(level) for _, of, _ in ops], -1)  # [width, b, ops]
      value = tf.gather(values, pick[..., None], batch_dims=2)[..., 0]  # [width, b]
      negate = (draw(12 + 3 * layer, [width]) < 0.5) & tf.gather(
          tf.constant([signed for *_, signed in ops]), pick)
      op = tf.gather(tf.constant([OPS.index(name) for name, *_ in ops], tf.int32), pick)
      if depth < 0:
        op = tf.where(layer < chain_depth, op, OPS.index("identity"))
      chains = apply(chains, tf.reshape(op, [-1]),
                     tf.reshape(tf.where(negate, -value, value), [-1]), "BILINEAR")
    gammas = _gamma(tf.random.experimental.stateless_fold_in(seed, 1), context,
                    [width + 2], alpha)
    weights = gammas[:width] / tf.reduce_sum(gammas[:width], 0)  # Dirichlet, [width, b].
    skip = gammas[width] / (gammas[width] + gammas[width + 1])  # Beta(alpha, alpha), [b].
    mix = tf.reduce_sum(weights[:, :, None, None, None]
                        * tf.reshape(chains, [width, -1, *images.shape[1:]]), 0)
    skip = skip[:, None, None, None]
    return (1.0 - skip) * images + skip * mix

  return on_examples(fn)


@AUGMENTATIONS.register("random_erasing")
def random_erasing(probability=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=None):
  """Random Erasing (Zhong et al., 2020): erases a random box of each image with
  `probability`.

  The box covers a fraction of the image uniform in `scale`, its height / width
  log-uniform in `ratio`; as torchvision, up to 10 draws for one that fits the image,
  none erased if no draw fits. `value`: None fills each erased pixel with a uniform
  random value in [0, 255] (the paper's RE-R), a number fills the box with it.
  """
  if not 0 <= probability <= 1:
    raise ValueError(f"random_erasing: probability must be in [0, 1], got {probability}")
  if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
    raise ValueError(f"random_erasing: scale must be (low, high) with 0 < low <= high <= 1, "
                     f"got {scale}")
  if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
    raise ValueError(f"random_erasing: ratio must be (low, high) with 0 < low <= high, "
                     f"got {ratio}")
  if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 255):
    raise ValueError(f"random_erasing: value must be None (random) or a number in "
                     f"[0, 255], got {value!r}")

  def fn(images, seed, context):
    height, width = images.shape[1], images.shape[2]
    draw = lambda i, *args: uniform(tf.random.experimental.stateless_fold_in(seed, i),
                                    context, *args)
    area = height * width * draw(0, [10], scale[0], scale[1])
    aspect = tf.exp(draw(1, [10], math.log(ratio[0]), math.log(ratio[1])))
    box_h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # [10, b]
    box_w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (box_h < height) & (box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), 0, output_type=tf.int32)  # [b]
    box_h, box_w = (tf.gather(tf.transpose(x), first[:, None], batch_dims=1)[:, 0]
                    for x in (box_h, box_w))
    erase = tf.reduce_any(fits, 0) & (draw(2, []) < probability)
    corner = draw(3, [2])
    top = tf.cast(corner[0] * tf.cast(height - box_h + 1, tf.float32), tf.int32)[:, None]
    left = tf.cast(corner[1] * tf.cast(width - box_w + 1, tf.float32), tf.int32)[:, None]
    rows, cols = tf.range(height)[None], tf.range(width)[None]
    in_rows = (rows >= top) & (rows < top + box_h[:, None])
    in_cols = (cols >= left) & (cols < left + box_w[:, None])
    box = in_rows[:, :, None, None] & in_cols[:, None, :, None] & erase[:, None, None, None]
    fill = (tf.transpose(draw(4, [height, width, 3], 0.0, 255.0), [3, 0, 1, 2])
            if value is None else float(value))
    return tf.where(box, fill, images)

  return on_examples(fn)
