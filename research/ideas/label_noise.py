"""Symmetric label noise, for robustness studies: each training example's target is
replaced, with probability `rate`, by a class drawn uniformly at random (possibly its
own). Seeded like every augmentation, so a resumed run sees the same noise; the hard
`label` (what accuracy is measured against) stays the true one.

    --augment="crop,flip,label_noise(rate=0.2)"
"""

import tensorflow as tf

from research.augment import AUGMENTATIONS, sharded, uniform


@AUGMENTATIONS.register("label_noise")
def label_noise(rate=0.1):
  """Replaces a random `rate` of the targets by uniformly drawn classes."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"label_noise: rate must be in [0, 1], got {rate}")

  @sharded
  def op(batch, seed, context):
    target = batch["target"]
    classes = target.shape[-1]
    noisy = uniform(seed, context) < rate
    drawn = uniform(tf.random.experimental.stateless_fold_in(seed, 1), context,
                    high=classes, dtype=tf.int32)
    return {**batch, "target": tf.where(noisy[:, None], tf.one_hot(drawn, classes), target)}

  return op
