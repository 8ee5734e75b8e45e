"""Stochastic depth (Huang et al. 2016): a residual branch dropped per example."""

import keras
from keras import layers, ops

from research import context


@keras.saving.register_keras_serializable(package="research")
class DropPath(layers.Layer):
  """Zeroes a residual branch for a random share of the examples in training, scaling
  the kept ones by 1 / (1 - rate); the identity in inference and outside training.

  The rate follows the run: `rate` times the fraction done (NASNet's scheduled drop
  path), read from the step context where the step is traced, so it is 0 at the first
  step and reaches `rate` at the last.
  """

  def __init__(self, rate, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.rate, self.seed = float(rate), seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def call(self, inputs, training=False):
    where = context.current()
    if not training or not self.rate or where is None:
      return inputs
    keep = 1.0 - self.rate * where.fraction
    draw = keras.random.uniform((ops.shape(inputs)[0], 1, 1, 1), seed=self.seed_generator)
    kept = ops.cast(draw < keep, inputs.dtype) / ops.cast(keep, inputs.dtype)
    return inputs * kept

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "seed": self.seed}
