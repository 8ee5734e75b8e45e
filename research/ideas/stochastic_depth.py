"""Stochastic depth (Huang et al. 2016) whose rate follows the run: each residual branch
is dropped for a random share of the examples, at a rate that grows linearly with the
block's depth and, read from the step context, with the fraction of training done
(NASNet's scheduled drop path): 0 at the first step, `rate` at the last.

    --model="resnet_drop_path(depth=20, rate=0.1)"
"""

import keras
from keras import layers, ops

from research import context
from research.models.registry import MODELS, training_defaults
from research.models.resnet import RECIPE, cifar_resnet
from research.registry import SpecError


@keras.saving.register_keras_serializable(package="research")
class DropPath(layers.Layer):
  """Zeroes its input for a share `rate x fraction done` of the examples in a training
  step, scaling the kept ones by 1 / keep; the identity anywhere else."""

  def __init__(self, rate, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.rate, self.seed = float(rate), seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def call(self, inputs, training=False):
    where = context.current()  # None outside a training step (evaluation, export).
    if not training or not self.rate or where is None:
      return inputs
    keep = 1.0 - self.rate * where.fraction
    draw = keras.random.uniform((ops.shape(inputs)[0], 1, 1, 1), seed=self.seed_generator)
    return inputs * ops.cast(draw < keep, inputs.dtype) / ops.cast(keep, inputs.dtype)

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@MODELS.register("resnet_drop_path")
def resnet_drop_path(num_classes, image_size, depth=20, rate=0.1):
  """A CIFAR ResNet with stochastic depth: the last block's rate, ramped up over the run."""
  if not 0.0 <= rate < 1.0 or (depth - 2) % 6:
    raise SpecError(f"rate={rate}, depth={depth}: a rate in [0, 1), a depth of 6n+2")
  return cifar_resnet(depth, num_classes, image_size, branch=lambda at: DropPath(rate * at),
                      name=f"resnet{depth}_drop_path")


training_defaults("resnet_drop_path", **RECIPE)
