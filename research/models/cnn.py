"""The classic TensorFlow/Keras CIFAR-10 tutorial CNNs."""

import keras
from keras import layers

from research.models.batchnorm import FusedBatchNorm
from research.models.dropout import ReplicaDropout
from research.models.registry import MODELS, logits, rescaled_input, training_defaults

# The tutorial's training: Adam at 1e-3, batch 64, no augmentation, 20 epochs, for 65-70%
# validation accuracy on CIFAR-10 (configs/baseline_cnn.flags names it).
TUTORIAL = dict(optimizer="adam", learning_rate=1e-3, momentum=0.9, weight_decay=0.0,
                schedule="constant", warmup_epochs=0.0, batch_size=64, augment="",
                epochs=20.0)


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


training_defaults("baseline_cnn", **TUTORIAL)


@MODELS.register("improved_cnn")
def improved_cnn(num_classes, image_size):
  """The tutorial's improved CNN: 3 VGG blocks with BatchNorm, dropout 0.2/0.3/0.4/0.5."""
  inputs, x = rescaled_input(image_size)
  for filters, dropout in ((32, 0.2), (64, 0.3), (128, 0.4)):
    for _ in range(2):
      x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_uniform",
                        activation="relu")(x)
      x = FusedBatchNorm()(x)
    x = layers.MaxPooling2D()(x)
    x = ReplicaDropout(dropout)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(128, activation="relu", kernel_initializer="he_uniform")(x)
  x = FusedBatchNorm()(x)  # 2-D: Keras' path (the fused op is for feature maps).
  x = ReplicaDropout(0.5)(x)
  return keras.Model(inputs, logits(x, num_classes), name="improved_cnn")


# Nesterov SGD with warmup and cosine decay and crop+flip instead of the tutorial's 400
# epochs of plain SGD: >= 80% validation accuracy in 50 epochs (configs/improved_cnn.flags
# names it).
training_defaults("improved_cnn", optimizer="sgd", learning_rate=0.05, momentum=0.9,
                  nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=2.0,
                  batch_size=128, augment="crop,flip", epochs=50.0)
