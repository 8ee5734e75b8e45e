"""mixup (Zhang et al., 2018): train on convex combinations of image pairs and of their
targets. One mixing weight per batch, lam ~ Beta(alpha, alpha), pairs by a seeded
permutation, so the batch is a function of (seed, step) like every augmentation.

    --augment="crop,flip,mixup(alpha=0.2)"
"""

import tensorflow as tf

from research.augment import AUGMENTATIONS


def beta(seed, alpha):
  """A stateless Beta(alpha, alpha) sample: g1 / (g1 + g2) of two Gamma(alpha) draws."""
  g = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
  return g[0] / (g[0] + g[1])


def partners(seed, batch):
  """A seeded permutation of the batch: example i is mixed with example partners[i]."""
  return tf.argsort(tf.random.stateless_uniform([batch], seed=seed))


@AUGMENTATIONS.register("mixup")
def mixup(alpha=0.2):
  """Mixes each image and target with another's by a Beta(alpha, alpha) weight."""
  if not alpha > 0:
    raise ValueError(f"mixup: alpha must be > 0, got {alpha}")

  def op(batch, seed, context):
    del context
    lam = beta(tf.random.experimental.stateless_fold_in(seed, 0), alpha)
    other = partners(tf.random.experimental.stateless_fold_in(seed, 1),
                     tf.shape(batch["image"])[0])
    mix = lambda x: lam * x + (1.0 - lam) * tf.gather(x, other)
    return {**batch, "image": mix(batch["image"]), "target": mix(batch["target"])}

  return op
