"""FLOPs per image of a Keras model, counted from the layers that multiply by a kernel.

A multiply-add is 2 FLOPs: a layer costs 2 * kernel parameters * the positions the kernel
is applied at. Counted: Dense and EinsumDense; Conv1D/2D/3D (grouped ones too) and their
transposes; DepthwiseConv1D/2D; SeparableConv1D/2D (depthwise plus pointwise);
MultiHeadAttention (its query, key, value, gate and output projections plus the two
attention matmuls, QK^T and scores x V). Biases, normalization, activations, softmax,
pooling and elementwise ops are left out (a few percent for CIFAR ResNets). At 224, the
keras.applications MobileNetV2 (alpha 0.35) and EfficientNetB0 count 59.3M and 386M
multiply-adds; published: 59M (tensorflow/models' MobileNetV2 table) and 390M.

Not counted: Attention, AdditiveAttention, GroupedQueryAttention, recurrent layers, and
layers inside custom layers other than MultiHeadAttention (nested models are counted
through). A layer is counted once, where it is first called, so a layer shared by several
calls is undercounted. Every shape but the batch must be known: a Dense on a sequence of
unknown length fails. Used by the model_summary hook and benchmarks.
"""

import math

from keras import layers

CONVOLUTIONS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
TRANSPOSED = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
COUNTED = (CONVOLUTIONS + TRANSPOSED + DEPTHWISE + SEPARABLE
           + (layers.Dense, layers.EinsumDense, layers.MultiHeadAttention))


def size(shape):
  """Elements per example of a [B, ...] shape."""
  return math.prod(shape[1:])


def layer_flops(layer):
  """FLOPs per example of one layer of COUNTED already called in a functional model.

  Positions come from element counts, so channels-first layers count like channels-last.
  """
  if isinstance(layer, layers.MultiHeadAttention):
    return attention_flops(layer)
  if isinstance(layer, SEPARABLE):  # Both parts run at every output position.
    kernels = math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
    return 2 * kernels * size(layer.output.shape) // layer.filters
  kernel = layer.kernel.shape
  if isinstance(layer, DEPTHWISE):  # [*window, in, multiplier]: a window per output value.
    return 2 * math.prod(kernel[:-2]) * size(layer.output.shape)
  if isinstance(layer, TRANSPOSED):  # [*window, filters, in]: the kernel per input position.
    return 2 * math.prod(kernel) * size(layer.input.shape) // kernel[-1]
  if isinstance(layer, layers.EinsumDense):
    return einsum_flops(layer)
  # Conv [*window, in / groups, filters] and Dense [in, units]: once per output position.
  return 2 * math.prod(kernel) * size(layer.output.shape) // kernel[-1]


def einsum_flops(layer):
  """An EinsumDense: each output value sums over the kernel axes missing from the output."""
  kernel_axes, output_axes = layer.equation.split(",")[1].split("->")
  contracted = math.prod(dim for axis, dim in zip(kernel_axes, layer.kernel.shape)
                         if axis not in output_axes)
  return 2 * size(layer.output.shape) * contracted


def attention_flops(layer):
  """A MultiHeadAttention from the shapes it was built with: the projections apply their
  kernels at every query (query, gate, output) or key (key, value) position, and each head
  multiplies every query by every key over key_dim, then the scores by values over
  value_dim. Cross-attention, with keys of another length than queries, counts the same way.
  """
  shapes = layer.get_build_config()["shapes_dict"]
  query, key = shapes["query_shape"], shapes.get("key_shape") or shapes["value_shape"]
  queries, keys = size(query[:-1]), size(key[:-1])  # Positions per example.
  kernel = lambda dense: math.prod(dense.kernel.shape)
  projections = (queries * (kernel(layer.query_dense) + kernel(layer.output_dense))
                 + keys * (kernel(layer.key_dense) + kernel(layer.value_dense)))
  if layer.get_config().get("use_gate"):  # A value-sized projection of the query.
    projections += queries * query[-1] * layer.num_heads * layer.value_dim
  # Per head, every query position meets every key position along the attention axes.
  scores = layer.num_heads * queries * math.prod(key[axis] for axis in layer.attention_axes)
  return 2 * projections + 2 * scores * (layer.key_dim + layer.value_dim)


def count_flops(model):
  """FLOPs of one forward pass per image; nested models are counted through."""
  total = 0
  for layer in model.layers:
    if hasattr(layer, "layers"):
      total += count_flops(layer)
    elif isinstance(layer, COUNTED):
      total += layer_flops(layer)
  return total
