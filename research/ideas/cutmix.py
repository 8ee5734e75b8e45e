"""CutMix (Yun et al., 2019): paste a box of another image into each image, and mix the
targets by the pasted area. The box's area is 1 - lam of the image, lam ~ Beta(alpha,
alpha), one per batch; targets are weighted by the area actually pasted (after
clipping at the border).

    --augment="crop,flip,cutmix(alpha=1.0)"
"""

import tensorflow as tf

from research.augment import AUGMENTATIONS, _boxes
from research.ideas.mixup import beta, partners


@AUGMENTATIONS.register("cutmix")
def cutmix(alpha=1.0):
  """Pastes a box of a partner image; targets mixed by the pasted area."""
  if not alpha > 0:
    raise ValueError(f"cutmix: alpha must be > 0, got {alpha}")

  def op(batch, seed, context):
    del context
    images = batch["image"]
    size, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    lam = beta(tf.random.experimental.stateless_fold_in(seed, 0), alpha)
    other = partners(tf.random.experimental.stateless_fold_in(seed, 1), size)
    side = tf.sqrt(1.0 - lam)
    box_h = tf.cast(tf.round(side * height), tf.int32)
    box_w = tf.cast(tf.round(side * width), tf.int32)
    centre = tf.random.stateless_uniform(
        [2, size], seed=tf.random.experimental.stateless_fold_in(seed, 2))
    box = _boxes(centre, height, width, box_h, box_w)
    pasted = tf.reduce_mean(tf.cast(box, tf.float32), axis=[1, 2, 3])[:, None]  # [B, 1]
    return {**batch, "image": tf.where(box, tf.gather(images, other), images),
            "target": (1.0 - pasted) * batch["target"]
                      + pasted * tf.gather(batch["target"], other)}

  return op
