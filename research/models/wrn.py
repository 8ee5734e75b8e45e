"""Wide residual networks (Zagoruyko & Komodakis 2016): WRN-depth-k on small images.

A 3x3 conv to 16 channels, then 3 stages of (depth - 4) / 6 pre-activation blocks
(BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3) at widths 16k, 32k and 64k, the second and
third stage starting at stride 2, then BN-ReLU, global average pooling and the head.

  --model=wrn                                WRN-16-4: 2.75M parameters
  --model="wrn(depth=28, width=10)"          WRN-28-10: 36.5M parameters, 5.24 GMACs
  --model="wrn(depth=28, width=10, dropout=0.3)"  the paper's dropout variant
"""

import keras
from keras import layers

from research.models.batchnorm import FusedBatchNorm
from research.models.dropout import ReplicaDropout
from research.models.registry import MODELS, logits, standardized_input, training_defaults
from research.registry import SpecError


def _bn_relu(x):
  return layers.ReLU()(FusedBatchNorm(momentum=0.9)(x))


def _conv(x, filters, kernel_size=3, strides=1):
  return layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                       kernel_initializer="he_normal")(x)


def wide_block(x, filters, strides, dropout):
  """A pre-activation basic block. Where the shape changes, the shortcut is a 1x1 conv of
  the block's activated input (BN-ReLU), as in the authors' code; else the input itself."""
  activated = _bn_relu(x)
  shortcut = x
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv(activated, filters, 1, strides)
  y = _bn_relu(_conv(activated, filters, strides=strides))
  if dropout:
    y = ReplicaDropout(dropout)(y)
  return layers.Add()([shortcut, _conv(y, filters)])


def wide_resnet(num_classes, image_size, depth, width, dropout):
  blocks = (depth - 4) // 6
  inputs, x = standardized_input(image_size)
  x = _conv(x, 16)
  for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
    for i in range(blocks):
      x = wide_block(x, filters, 2 if stage and i == 0 else 1, dropout)
  x = layers.GlobalAveragePooling2D()(_bn_relu(x))
  return keras.Model(inputs, logits(x, num_classes), name=f"wrn_{depth}_{width}")


@MODELS.register("wrn")
def wrn(num_classes, image_size, depth=16, width=4, dropout=0.0):
  """Zagoruyko & Komodakis' wide ResNet WRN-depth-width (6n+4 layers, widths 16k-64k)."""
  if depth < 10 or (depth - 4) % 6:
    raise SpecError(f"wrn: depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40), got {depth}")
  if width < 1:
    raise SpecError(f"wrn: width must be >= 1, got {width}")
  if not 0.0 <= dropout < 1.0:
    raise SpecError(f"wrn: dropout must be in [0, 1), got {dropout}")
  return wide_resnet(num_classes, image_size, depth, width, dropout)


# The paper's CIFAR training (section 3): SGD 0.1 with Nesterov momentum 0.9, weight
# decay 5e-4, batch 128, crop(padding=4)+flip, 200 epochs. Their schedule, x0.2 at epochs
# 60, 120 and 160, is not a registered one (`step` is x0.1 at 50% and 75%): cosine here,
# as most later WRN baselines train. Their weight decay is an L2 gradient (5e-4 x w)
# through the momentum: here the l2 regularizer of the same gradient (biases and
# BatchNorm left out) in place of --weight_decay's decoupled decay, which at 5e-4 would
# decay 1 / (1 - momentum) = 10x less per step.
training_defaults("wrn", optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                  weight_decay=0.0, regularizers="l2(scale=2.5e-4)", schedule="cosine",
                  warmup_epochs=0.0, batch_size=128, augment="crop,flip", epochs=200.0)
