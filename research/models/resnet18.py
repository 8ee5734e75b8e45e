"""ResNet-18 as most CIFAR papers train it: He et al.'s ImageNet ResNet-18 (2016, Table 1)
with a 3x3 stride-1 stem and no max-pool, so that 32x32 images keep their resolution into
the first stage (the layout of kuangliu/pytorch-cifar, the usual baseline): 4 stages of 2
basic blocks, widths 64/128/256/512, strides 1/2/2/2; 11.17M parameters, 0.56 GMACs at 32x32.
`width` scales them (k, 2k, 4k, 8k), the knob of Nakkiran et al.'s "Deep Double Descent".
"""

import keras
from keras import layers

from research.models.registry import MODELS, logits, standardized_input, training_defaults
from research.models.resnet import basic_block, conv_bn
from research.registry import SpecError

BLOCKS_PER_STAGE = 2


@MODELS.register("resnet18")
def resnet18(num_classes, image_size, width=64, zero_init_residual=False):
  """ResNet-18 with a 3x3 stem for small images: widths 64-512, 11.2M parameters."""
  if width < 1:
    raise SpecError(f"resnet18: width must be >= 1, got {width}")
  inputs, x = standardized_input(image_size)
  x = conv_bn(x, width)
  for stage, filters in enumerate((width, 2 * width, 4 * width, 8 * width)):
    for i in range(BLOCKS_PER_STAGE):
      x = basic_block(x, filters, 2 if stage and i == 0 else 1, zero_init_residual)
  x = layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, logits(x, num_classes), name="resnet18")


# kuangliu/pytorch-cifar's training (main.py): SGD 0.1, plain momentum 0.9, weight decay
# 5e-4, crop(padding=4)+flip, cosine over 200 epochs, batch 128. Its weight decay is
# PyTorch's, an L2 gradient (5e-4 x w) that goes through the momentum: here the l2
# regularizer of the same gradient (scale 2.5e-4 on sum(w^2); biases and BatchNorm left
# out, which PyTorch decays too) in place of --weight_decay's decoupled decay, which at
# 5e-4 would decay 1 / (1 - momentum) = 10x less per step.
RECIPE = dict(optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
              weight_decay=0.0, regularizers="l2(scale=2.5e-4)", schedule="cosine",
              warmup_epochs=0.0, batch_size=128, augment="crop,flip", epochs=200.0)
training_defaults("resnet18", **RECIPE)
