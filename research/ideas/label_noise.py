"""Symmetric label noise, for robustness studies: each training example's target is
replaced, with probability `rate`, by a class drawn uniformly at random (possibly its
own). Seeded like every augmentation, so a resumed run sees the same noise; the hard
`label` (what accuracy is measured against) stays the true one.

    --augment="crop,flip,label_noise(rate=0.2)"
"""

import tensorflow as tf

from research.augment import AUGMENTATIONS


@AUGMENTATIONS.register("label_noise")
def label_noise(rate=0.1):
  """Replaces a random `rate` of the targets by uniformly drawn classes."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"label_noise: rate must be in [0, 1], got {rate}")

  def op(batch, seed, context):
    del context
    target = batch["target"]
    size, classes = tf.shape(target)[0], target.shape[-1]
    noisy = tf.random.stateless_uniform([size], seed=seed) < rate
    drawn = tf.random.stateless_uniform([size], seed=tf.random.experimental.stateless_fold_in(
        seed, 1), maxval=classes, dtype=tf.int32)
    return {**batch, "target": tf.where(noisy[:, None], tf.one_hot(drawn, classes), target)}

  return op
