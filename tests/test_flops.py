import inspect

import keras
from keras import layers
import pytest

from research import flops, models
from research.config import Config


def test_conv_and_dense_by_hand():
  inputs = keras.Input((8, 8, 3))
  x = layers.Conv2D(4, 3, padding="same")(inputs)        # 8x8 positions
  x = layers.Conv2D(6, 3, strides=2, padding="same")(x)  # 4x4 positions
  x = layers.MaxPooling2D()(x)                           # not counted
  x = layers.Flatten()(x)                                # 2*2*6 = 24 features
  outputs = layers.Dense(10)(x)
  model = keras.Model(inputs, outputs)
  expected = 2 * (3 * 3 * 3 * 4) * 64 + 2 * (3 * 3 * 4 * 6) * 16 + 2 * (24 * 10)
  assert flops.count_flops(model) == expected


def test_nested_models_are_counted_through():
  inner = keras.Sequential([keras.Input((4,)), layers.Dense(5)])
  inputs = keras.Input((4,))
  model = keras.Model(inputs, layers.Dense(3)(inner(inputs)))
  assert flops.count_flops(model) == 2 * 4 * 5 + 2 * 5 * 3


def test_dense_on_a_sequence_counts_every_position():
  inputs = keras.Input((7, 4))
  model = keras.Model(inputs, layers.Dense(2)(inputs))
  assert flops.count_flops(model) == 2 * 4 * 2 * 7


def test_resnet20_matches_the_paper():
  # He et al. 2016 give ~41M multiply-adds for the CIFAR ResNet-20.
  model = models.build(Config(model="resnet20", num_classes=10, image_size=32))
  assert flops.count_flops(model) == pytest.approx(2 * 41e6, rel=0.02)


def single_layer(layer, shape):
  inputs = keras.Input(shape)
  return keras.Model(inputs, layer(inputs))


def test_depthwise_by_hand():
  # 4x4 output positions x 3 channels x multiplier 2, each a 3x3 window of one channel.
  model = single_layer(layers.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2),
                       (8, 8, 3))
  assert flops.count_flops(model) == 2 * (3 * 3 * 3 * 2) * 16


def test_separable_is_depthwise_plus_pointwise():
  # 6x6 valid positions: the 3x3 depthwise (3 channels x 2) then a 1x1 from 6 to 7 channels.
  model = single_layer(layers.SeparableConv2D(7, 3, depth_multiplier=2), (8, 8, 3))
  assert flops.count_flops(model) == 2 * (3 * 3 * 3 * 2) * 36 + 2 * (6 * 7) * 36


def test_grouped_conv1d_and_conv3d_by_hand():
  # Conv1D with 2 groups: each of the 6 outputs reads 3 taps of 4 / 2 channels, 7 positions.
  conv1d = single_layer(layers.Conv1D(6, 3, strides=2, groups=2), (16, 4))
  assert flops.count_flops(conv1d) == 2 * (3 * 2 * 6) * 7
  conv3d = single_layer(layers.Conv3D(5, 3), (6, 6, 6, 2))  # 4x4x4 valid positions
  assert flops.count_flops(conv3d) == 2 * (3 * 3 * 3 * 2 * 5) * 64


def test_transposed_conv_applies_its_kernel_at_every_input_position():
  # 4x4 inputs of 3 channels, each spread over a 3x3 window of 5 channels (a 9x9 output).
  model = single_layer(layers.Conv2DTranspose(5, 3, strides=2), (4, 4, 3))
  assert model.output.shape[1:3] == (9, 9)
  assert flops.count_flops(model) == 2 * (3 * 3 * 5 * 3) * 16


def test_einsum_dense_like_dense():
  # [5, 8] -> [5, 2, 3]: each of the 30 outputs per example sums over the 8 features.
  model = single_layer(layers.EinsumDense("abc,cde->abde", output_shape=(5, 2, 3)), (5, 8))
  assert flops.count_flops(model) == 2 * 5 * 8 * 2 * 3


def test_self_attention_by_hand():
  sequence = keras.Input((5, 8))  # 5 positions of 8 features
  attention = layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4)
  model = keras.Model(sequence, attention(sequence, sequence))
  projections = 2 * 5 * (8 * 2 * 3 + 8 * 2 * 3 + 8 * 2 * 4 + 2 * 4 * 8)  # Q, K, V, output
  matmuls = 2 * 2 * 5 * 5 * 3 + 2 * 2 * 5 * 5 * 4  # QK^T over key_dim, scores x V over value_dim
  assert flops.count_flops(model) == projections + matmuls


def test_cross_attention_counts_keys_at_their_length():
  query, value = keras.Input((5, 8)), keras.Input((7, 6))
  attention = layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4)
  model = keras.Model([query, value], attention(query, value))
  projections = 2 * 5 * (8 * 2 * 3 + 2 * 4 * 8) + 2 * 7 * (6 * 2 * 3 + 6 * 2 * 4)
  matmuls = 2 * 2 * 5 * 7 * (3 + 4)
  assert flops.count_flops(model) == projections + matmuls


def test_attention_along_one_axis_meets_only_the_keys_on_it():
  grid = keras.Input((3, 4, 8))  # each of the 3 rows attends along its own 4 columns
  attention = layers.MultiHeadAttention(num_heads=2, key_dim=3, attention_axes=(2,))
  model = keras.Model(grid, attention(grid, grid))
  projections = 2 * 12 * (8 * 2 * 3) * 4  # Q, K, V and output at all 12 positions
  assert flops.count_flops(model) == projections + 2 * 2 * 12 * 4 * (3 + 3)


def test_attention_gate_is_a_value_sized_projection_of_the_query():
  if "use_gate" not in inspect.signature(layers.MultiHeadAttention).parameters:
    pytest.skip(f"keras {keras.__version__} has no gated attention")
  sequence = keras.Input((5, 8))
  plain, gated = (layers.MultiHeadAttention(num_heads=2, key_dim=3, value_dim=4, use_gate=gate)
                  for gate in (False, True))
  count = lambda attention: flops.count_flops(
      keras.Model(sequence, attention(sequence, sequence)))
  assert count(gated) - count(plain) == 2 * 5 * 8 * 2 * 4

def test_mobilenet_v2_matches_the_published_figure():
  # tensorflow/models' MobileNetV2 table: mobilenet_v2_0.35_224 takes 59M multiply-adds.
  # Without its depthwise convolutions the count was 50.7M, 14% short.
  model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), alpha=0.35)
  assert flops.count_flops(model) == pytest.approx(2 * 59e6, rel=0.02)
