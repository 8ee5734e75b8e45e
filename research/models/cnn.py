"""The classic TensorFlow/Keras CIFAR-10 tutorial CNNs."""

import keras
from keras import layers

from research.models.registry import MODELS, logits, rescaled_input


@MODELS.register("baseline_cnn")
def baseline_cnn(num_classes, image_size):
  """The TensorFlow CNN tutorial: 3 conv + dense 64, about 65-70% on CIFAR-10."""
  inputs, x = rescaled_input(image_size)
  x = layers.Conv2D(32, 3, activation="relu")(x)
  x = layers.MaxPooling2D()(x)
  x = layers.Conv2D(64, 3, activation="relu")(x)
  x = layers.MaxPooling2D()(x)
  x = layers.Conv2D(64, 3, activation="relu")(x)
  x = layers.Flatten()(x)
  x = layers.Dense(64, activation="relu")(x)
  return keras.Model(inputs, logits(x, num_classes), name="baseline_cnn")


@MODELS.register("improved_cnn")
def improved_cnn(num_classes, image_size):
  """The tutorial's improved CNN: 3 VGG blocks with BatchNorm, dropout 0.2/0.3/0.4/0.5."""
  inputs, x = rescaled_input(image_size)
  for filters, dropout in ((32, 0.2), (64, 0.3), (128, 0.4)):
    for _ in range(2):
      x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_uniform",
                        activation="relu")(x)
      x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Dropout(dropout)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(128, activation="relu", kernel_initializer="he_uniform")(x)
  x = layers.BatchNormalization()(x)
  x = layers.Dropout(0.5)(x)
  return keras.Model(inputs, logits(x, num_classes), name="improved_cnn")
