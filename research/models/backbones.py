"""ImageNet backbones from `keras.applications`, each under a new classification head.

Every model still takes raw [0, 255] pixels at --image_size: the resize to the
backbone's input size and the backbone's own preprocessing are layers of the model, so
saved and exported models take raw pixels too. The backbone is one nested layer named
`backbone` and is built with random weights; `--weights=imagenet|PATH` fills it at the
start of a run (research/transfer.py). The head is the `logits` layer, as in every
model of the registry, which is what --freeze_epochs trains alone. The backbones' BatchNorms
run as TensorFlow's fused op (research/models/batchnorm.py): a float32 training step 1.08x
(mobilenet_v3_small) to 1.14x (efficientnet_b0) faster on the AVX2 EPYC.

`input_size` is the size the backbone sees (default: the one its ImageNet weights were
trained at, 224). On a CPU, `resnet50(input_size=64)` on 32x32 images costs 12x less.
"""

import dataclasses
from typing import Callable

import keras
from keras import layers

from research.config import ConfigError, item_name
from research.models.batchnorm import fuse_batchnorms
from research.models.dropout import ReplicaDropout
from research.models.registry import MODELS, logits, training_defaults
from research.registry import SpecError

PREFERRED_SIZE = 224  # The ImageNet training size of every backbone below.


@keras.saving.register_keras_serializable(package="research")
class CaffePreprocessing(layers.Layer):
  """keras.applications' "caffe" preprocessing (ResNet50): RGB to BGR, minus the
  ImageNet mean per channel, as a layer so that it is saved with the model."""

  MEAN_BGR = (103.939, 116.779, 123.68)

  def call(self, inputs):
    return inputs[..., ::-1] - keras.ops.cast(self.MEAN_BGR, inputs.dtype)


@keras.saving.register_keras_serializable(package="research")
class StemNormalization(layers.Normalization):
  """EfficientNet's input normalization as Keras builds it to load ImageNet weights: by
  the mean and variance in the layer's weights, then by a fixed factor per channel
  (Keras' Normalization divides by the standard deviation where the original divides by
  the variance, so Keras adds a Rescaling by 1/sqrt(std), with `weights="imagenet"`
  only). Reads its weights at every call: Keras' layer computes with a copy taken when
  it is built or loaded from a file, so `set_weights` and checkpoint restores, which
  --weights and resume use, would not reach it."""

  def __init__(self, factor, **kwargs):
    super().__init__(**kwargs)
    if self.input_mean is not None or self.invert:
      raise ValueError("StemNormalization: for the mean and variance of its weights only")
    self.factor = tuple(factor)

  def call(self, inputs):
    weight = lambda v: keras.ops.cast(keras.ops.reshape(v, self._broadcast_shape),
                                      self.compute_dtype)
    inputs = keras.ops.convert_to_tensor(inputs, self.compute_dtype)
    std = keras.ops.maximum(keras.ops.sqrt(weight(self.adapt_variance)),
                            keras.config.epsilon())
    factor = keras.ops.cast(self.factor, self.compute_dtype)
    return (inputs - weight(self.adapt_mean)) / std * factor

  def get_config(self):
    return {**super().get_config(), "factor": self.factor}


@dataclasses.dataclass(frozen=True)
class Backbone:
  constructor: Callable       # keras.applications class
  preprocessing: Callable     # () -> layer, or None: the application preprocesses itself
  options: dict               # more keyword arguments of the constructor
  stem_factor: tuple = ()     # () or a StemNormalization's factor (EfficientNet's)


IMAGENET_STD_RGB = (0.229, 0.224, 0.225)  # keras.applications' IMAGENET_STDDEV_RGB


BACKBONES = {
    "resnet50": Backbone(keras.applications.ResNet50, CaffePreprocessing, {}),
    # These three normalize inside the application (include_preprocessing / Rescaling).
    "efficientnet_b0": Backbone(keras.applications.EfficientNetB0, None, {},
                                stem_factor=tuple(s ** -0.5 for s in IMAGENET_STD_RGB)),
    "mobilenet_v3_small": Backbone(keras.applications.MobileNetV3Small, None,
                                   {"include_preprocessing": True}),
    "convnext_tiny": Backbone(keras.applications.ConvNeXtTiny, None,
                              {"include_preprocessing": True}),
}


def imagenet_backbone(model):
  """The backbone name of --model=`model` (a spec), or ConfigError if it has no ImageNet
  weights."""
  name = item_name(model)
  if name not in BACKBONES:
    raise ConfigError(f"--weights=imagenet: --model={model} has no ImageNet weights "
                      f"(the backbones that do: {', '.join(BACKBONES)})")
  return name


def application(name, input_size, weights=None):
  """The headless keras.applications network `name` (global average pooled features)."""
  spec = BACKBONES[name]
  return spec.constructor(include_top=False, weights=weights, pooling="avg",
                          input_shape=(input_size, input_size, 3), **spec.options)


def _network(name, input_size):
  """The model's backbone: the network keras.applications builds to load ImageNet weights
  (with random weights), its BatchNorms fused."""
  factor = BACKBONES[name].stem_factor
  def replace(layer):
    if factor and type(layer) is layers.Normalization:
      return StemNormalization(factor, **layer.get_config())
    return None
  return fuse_batchnorms(application(name, input_size), replace)


def _classifier(name, num_classes, image_size, input_size, dropout):
  if input_size < 32:
    raise SpecError(f"{name}: input_size must be >= 32, got {input_size}")
  inputs = keras.Input((image_size, image_size, 3), name="images")
  x = inputs
  if input_size != image_size:
    x = layers.Resizing(input_size, input_size, name="resize")(x)
  if BACKBONES[name].preprocessing is not None:
    x = BACKBONES[name].preprocessing(name="preprocess")(x)
  backbone = _network(name, input_size)
  backbone.name = "backbone"
  x = backbone(x)
  if dropout:
    x = ReplicaDropout(dropout, name="head_dropout")(x)
  return keras.Model(inputs, logits(x, num_classes), name=name)


def _register(name):
  @MODELS.register(name)
  def build(num_classes, image_size, input_size=PREFERRED_SIZE, dropout=0.2):
    return _classifier(name, num_classes, image_size, input_size, dropout)
  build.__doc__ = (f"keras.applications {BACKBONES[name].constructor.__name__} under a new "
                   "head; input_size: what the backbone sees (--weights=imagenet|PATH)")
  return build


# Fine-tuning from ImageNet, the classic tutorial's transfer recipe
# (configs/finetune_imagenet.flags names it): the head alone for 2 epochs, then
# everything, the backbone at a tenth of Adam's learning rate.
FINE_TUNING = dict(weights="imagenet", freeze_epochs=2.0, backbone_lr_scale=0.1,
                   optimizer="adam", learning_rate=1e-3, momentum=0.9, weight_decay=0.0,
                   schedule="cosine", warmup_epochs=0.0, batch_size=64,
                   augment="crop(padding=4),flip", epochs=10.0)

for _name in BACKBONES:
  _register(_name)
  training_defaults(_name, **FINE_TUNING)
