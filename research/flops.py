"""FLOPs per image of a Keras model, counted from its Conv2D and Dense layers.

A multiply-add is 2 FLOPs: a layer costs 2 * kernel parameters * output positions.
Biases, normalization, activations and pooling are left out (a few percent for
CIFAR ResNets). Used by the model_summary hook and benchmarks.
"""

import math

from keras import layers


def layer_flops(layer):
  """FLOPs per example of one Conv2D/Dense layer already called in a functional model."""
  kernel = math.prod(layer.kernel.shape)
  if isinstance(layer, layers.Conv2D):  # Spatial positions of the [B, H, W, C] output.
    positions = math.prod(layer.output.shape[1:-1])
  else:  # Dense on [B, ..., features]: once per leading position.
    positions = math.prod(layer.output.shape[1:-1]) if len(layer.output.shape) > 2 else 1
  return 2 * kernel * positions


def count_flops(model):
  """FLOPs of one forward pass per image; nested models are counted through."""
  total = 0
  for layer in model.layers:
    if hasattr(layer, "layers"):
      total += count_flops(layer)
    elif isinstance(layer, (layers.Conv2D, layers.Dense)):
      total += layer_flops(layer)
  return total
