"""The registry and the pieces every architecture shares."""

import weakref

import keras
from keras import layers
import numpy as np

from research.config import ConfigError, fields, reason
from research.registry import Registry, SpecError

MODELS = Registry("model")

# Model name -> {config field: value}: the training settings a model trains well with,
# taken by train.py for every field no flag sets (`training_defaults`).
TRAINING_DEFAULTS = {}

# Per-channel statistics of CIFAR-10 training pixels, in [0, 255] units.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_VARIANCE = (63.0 ** 2, 62.1 ** 2, 66.7 ** 2)


def training_defaults(name, **settings):
  """Registers the recommended training settings of model `name` (Config fields):
  `python train.py --model=NAME` takes them where no flag or flagfile sets the field."""
  unknown = sorted(set(settings) - {field for field, *_ in fields()})
  if unknown:
    raise ValueError(f"training_defaults({name!r}): not config fields: {', '.join(unknown)}")
  if name in TRAINING_DEFAULTS:
    raise ValueError(f"training defaults of {name!r} are already registered")
  TRAINING_DEFAULTS[name] = settings


def defaults_of(model):
  """The training defaults of `model` (a --model item, e.g. "resnet50(input_size=64)")."""
  return TRAINING_DEFAULTS.get(MODELS.parse(model).name, {})


def build(config):
  spec = MODELS.parse(config.model)  # SpecError names the known models.
  try:
    return MODELS.build(spec, config.num_classes, config.image_size)
  except SpecError as e:  # A builder refusing one of its settings, e.g. bn_epsilon=0.
    raise ConfigError(f"--model={config.model}: {e}") from None
  except ValueError as e:  # Keras' shape checks: the images too small for the network.
    raise ConfigError(f"--model={config.model} cannot be built for --image_size="
                      f"{config.image_size}: {reason(e)}") from None


_AT_SIZE = weakref.WeakKeyDictionary()  # model -> {image size: the model at that size}


def at_image_size(model, size):
  """`model` on size x size images: itself at its own input size (or any size), else a
  functional copy on the same layers, so the same variables, made once per size
  (progressive resizing, --low_res_epochs, trains through it). A ValueError if its layers
  cannot take that size."""
  try:
    own = tuple(model.inputs[0].shape[1:3])
  except (AttributeError, IndexError, TypeError, ValueError):
    return model  # A subclassed model takes what its layers take.
  if own in ((size, size), (None, None)):
    return model
  copies = _AT_SIZE.setdefault(model, {})
  if size not in copies:
    shape = (size, size, *model.inputs[0].shape[3:])
    copies[size] = keras.models.clone_model(
        model, input_tensors=keras.Input(shape, name=model.inputs[0].name),
        clone_function=lambda layer: layer)
  return copies[size]


def standardized_input(image_size, name="images"):
  """(Input, standardized tensor): per-channel mean/std normalization inside the model."""
  inputs = keras.Input((image_size, image_size, 3), name=name)
  x = layers.Normalization(mean=CIFAR_MEAN, variance=CIFAR_VARIANCE, name="standardize")(inputs)
  return inputs, x


def rescaled_input(image_size, name="images"):
  """(Input, tensor in [0, 1]): the Keras tutorials' `/255` scaling."""
  inputs = keras.Input((image_size, image_size, 3), name=name)
  return inputs, layers.Rescaling(1.0 / 255, name="rescale")(inputs)


# The classifier head's layer: what --freeze_epochs trains alone, --backbone_lr_scale
# leaves at the full rate and --init_from makes new when the classes differ.
HEAD_LAYER = "logits"


def logits(x, num_classes):
  """The classifier head; float32 so the softmax and loss never run in half precision."""
  return layers.Dense(num_classes, dtype="float32", name=HEAD_LAYER)(x)


def head_indices(model):
  """Indices in `model.trainable_variables` of the head's variables."""
  return tuple(i for i, v in enumerate(model.trainable_variables)
               if v.path.split("/")[0] == HEAD_LAYER)


def init_from_data(model, images):
  """Runs each layer's `init_from_data(inputs)` (e.g. patch whitening) on what reaches
  it from `images` (uint8 [N, H, W, 3], or a function returning them, called only if
  a layer needs them). Returns the names of the layers it set."""
  layers_to_set = [layer for layer in model.layers if hasattr(layer, "init_from_data")]
  if layers_to_set and callable(images):
    images = images()
  for layer in layers_to_set:
    feed = keras.Model(model.inputs, layer.input)
    layer.init_from_data(feed.predict(images.astype(np.float32), batch_size=500, verbose=0))
  return [layer.name for layer in layers_to_set]
