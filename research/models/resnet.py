"""CIFAR ResNets (He et al. 2016, section 4.2): 6n+2 layers, widths 16/32/64."""

import keras
from keras import layers

from research.models.batchnorm import FusedBatchNorm
from research.models.registry import MODELS, logits, standardized_input, training_defaults


def conv_bn(x, filters, strides=1, relu=True, gamma="ones"):
  """3x3 conv (no bias, He-normal) -> BatchNorm -> ReLU (none if not `relu`)."""
  x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                    kernel_initializer="he_normal")(x)
  x = FusedBatchNorm(momentum=0.9, gamma_initializer=gamma)(x)
  return layers.ReLU()(x) if relu else x


def basic_block(x, filters, strides, zero_init_residual=False, branch=None):
  """He et al.'s basic block: two 3x3 conv-BN, a projection shortcut where the shape
  changes; `branch`, if given, is applied to the residual branch before the sum."""
  shortcut = x
  if strides != 1 or x.shape[-1] != filters:
    shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(x)
    shortcut = FusedBatchNorm(momentum=0.9)(shortcut)
  y = conv_bn(x, filters, strides)
  y = conv_bn(y, filters, relu=False, gamma="zeros" if zero_init_residual else "ones")
  if branch is not None:
    y = branch(y)
  return layers.ReLU()(layers.Add()([shortcut, y]))


def cifar_resnet(depth, num_classes, image_size, zero_init_residual=False, branch=None,
                 name=None):
  """`zero_init_residual`: each residual branch's last BatchNorm starts at scale 0, so
  that every block starts as the identity (Goyal et al. 2017). `branch(position)`: a
  layer for the residual branch of the block at `position`, its depth in the network
  in (0, 1] (stochastic depth's rate grows with it: research/ideas/stochastic_depth.py)."""
  blocks = (depth - 2) // 6
  inputs, x = standardized_input(image_size)
  x = conv_bn(x, 16)
  for n in range(3 * blocks):
    stage, i = divmod(n, blocks)
    x = basic_block(x, (16, 32, 64)[stage], 2 if stage and i == 0 else 1, zero_init_residual,
                    branch and branch((n + 1) / (3 * blocks)))
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, logits(x, num_classes), name=name or f"resnet{depth}")


# He et al.'s SGD at 0.1 with Nesterov momentum and crop+flip, the cosine decay of
# later work instead of their steps (Config's own defaults are these).
RECIPE = dict(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
              weight_decay=5e-4, schedule="cosine", warmup_epochs=0.0, batch_size=128,
              augment="crop,flip", epochs=30.0)


def _builder(depth):
  # Deep, the blocks start as the identity: without it resnet56's logits start 4.6x as
  # large as resnet8's, and at its default SGD 0.1 it learned nothing in 2 epochs (19.6%
  # against 65.8% with it). Shallow, it only slows the start (docs/RECIPES.md).
  def build(num_classes, image_size, zero_init_residual=depth >= 56):
    return cifar_resnet(depth, num_classes, image_size, zero_init_residual)
  blocks = (depth - 2) // 6
  build.__doc__ = (f"He et al.'s CIFAR ResNet-{depth}: {blocks} basic "
                   f"block{'s' if blocks > 1 else ''} per stage, widths 16/32/64.")
  return build


for _depth in (8, 20, 56):
  MODELS.register(f"resnet{_depth}")(_builder(_depth))
  training_defaults(f"resnet{_depth}", **RECIPE)
