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
