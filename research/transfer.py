"""Where a fresh run's weights come from: --weights and --init_from.

Both act once, at the start of a run that has no checkpoint; a resumed run restores its
own checkpoint instead. What was loaded and what is new goes to the log and to
`<model_dir>/initialization.json`.

The head is the `logits` layer (every model of the registry ends in it); "backbone"
means every other variable, as --freeze_epochs and --backbone_lr_scale use it.
"""

import os
import warnings

from absl import logging
import numpy as np

from research import evaluation, files
from research.config import ConfigError, reason
from research.models import HEAD_LAYER, backbones

RECORD_FILE = "initialization.json"


def initialize(model, config, class_names, write=True):
  """Applies --weights or --init_from to a freshly built `model`; returns the record
  ({} when both are off) after logging it and, if `write`, writing it to the model
  dir."""
  if config.weights != "none":
    record = load_weights(model, config.weights, config.model)
  elif config.init_from:
    record = init_from(model, config.init_from, class_names, config.init_weights)
  else:
    return {}
  if write:
    files.write_json(os.path.join(config.model_dir, RECORD_FILE), record)
  new = [entry["variable"] for entry in record["new"]]
  logging.info("initialized from %s: loaded %d of %d weights%s", record["source"],
               len(record["loaded"]), len(record["loaded"]) + len(new),
               f"; new: {', '.join(new[:6])}{' ...' if len(new) > 6 else ''}" if new else "")
  return record


# --- --weights ---------------------------------------------------------------------


def load_weights(model, weights, model_name):
  """ImageNet weights (downloaded through keras.applications) or a weights file into the
  model's `backbone` layer; a file goes into the whole model if it has no backbone."""
  target = _backbone(model)
  if weights == "imagenet":
    name = backbones.imagenet_backbone(model_name)
    try:
      source = backbones.application(name, target.input_shape[1], weights="imagenet")
    except Exception as e:  # pylint: disable=broad-except  (URL errors take many forms)
      raise ConfigError(
          f"--weights=imagenet: cannot get the ImageNet weights of {name} "
          f"({reason(e)}). Without internet, pass "
          "--weights=PATH (a Keras weights file of the backbone, downloaded elsewhere) or "
          "--init_from=RUN_DIR (a run of yours)") from None
    target.set_weights(source.get_weights())
  else:
    # A backbone's file was saved from keras.applications' network, whose layer classes
    # a `.weights.h5` file is keyed by: it loads into that network, then is copied over
    # (our backbone's BatchNorms are another class, with the same weights in order).
    source = model if target is None else backbones.application(
        backbones.imagenet_backbone(model_name), target.input_shape[1])
    try:
      with warnings.catch_warnings():  # A mismatch warns once per layer, then raises.
        warnings.simplefilter("ignore")
        source.load_weights(weights)
    except Exception as e:  # pylint: disable=broad-except  (h5py, shape and name errors)
      raise ConfigError(f"--weights={weights}: cannot load it into "
                        f"{'the model' if target is None else 'the backbone'} "
                        f"({reason(e)})") from None
    if target is None:
      target = model
    else:
      target.set_weights(source.get_weights())
  loaded = [v.path for v in target.weights]
  new = [{"variable": v.path, "reason": "not in the weights"}
         for v in model.weights if target is not model and not _within(v, target)]
  return {"source": f"--weights={weights}", "loaded": loaded, "new": new}


def _backbone(model):
  try:
    return model.get_layer("backbone")
  except ValueError:
    return None


def _within(variable, layer):
  return any(variable is w for w in layer.weights)


# --- --init_from -------------------------------------------------------------------


def init_from(model, run_dir, class_names, weights="model"):
  """Copies the weights of another run's saved model (`weights="checkpoint"`: of its
  newest checkpoint, evaluation.load_run) into `model` where they fit.

  Layers are paired by position when both models have the same layer types in the same
  order, nested models' included (the same architecture, whatever Keras numbered its
  layers), else by name; then the weights of a pair are copied in order where the shapes
  agree, except between nested models of different architectures (two backbones), which
  share nothing. The head is new unless the source run had exactly these classes.
  """
  _, source_classes, source = evaluation.load_run(run_dir, weights, flag="--init_weights")
  matched_by, loaded, new = copy_weights(model, source,
                                         list(source_classes) == list(class_names))
  read = f" --init_weights={weights}" if weights != "model" else ""
  return {"source": f"--init_from={run_dir}{read}", "matched_by": matched_by,
          "loaded": loaded, "new": new}


def copy_weights(model, source, same_classes):
  """Copies `source`'s weights into `model` as `init_from` says; returns (how layers
  were paired, ["variable <- source variable"], [{"variable", "reason"} left as built])."""
  pairs, matched_by = pair_layers(model, source)
  loaded, new = [], []
  for layer, source_layer in pairs:
    if layer.name == HEAD_LAYER and not same_classes:
      new += [{"variable": v.path, "reason": "the classes differ"} for v in layer.weights]
      continue
    if (hasattr(layer, "layers") and source_layer is not None
        and _kinds([layer]) != _kinds([source_layer])):  # Two networks share no order.
      new += [{"variable": v.path, "reason": f"{source_layer.name} is another network in "
               "the source"} for v in layer.weights]
      continue
    source_weights = source_layer.weights if source_layer is not None else []
    for i, variable in enumerate(layer.weights):
      match = source_weights[i] if i < len(source_weights) else None
      if match is None:
        new.append({"variable": variable.path, "reason": "not in the source"})
      elif tuple(match.shape) != tuple(variable.shape):
        new.append({"variable": variable.path, "reason": f"shape {tuple(match.shape)} in "
                    f"the source, {tuple(variable.shape)} here"})
      else:
        variable.assign(np.asarray(match.numpy(), variable.dtype))
        loaded.append(f"{variable.path} <- {match.path}")
  return matched_by, loaded, new


def _kinds(layers):
  """The layer types of `layers` in order, nested models' spelled out. A model saved
  before its BatchNorm became the fused one has the same kinds."""
  import keras  # pylint: disable=g-import-not-at-top
  return [("BatchNormalization" if isinstance(layer, keras.layers.BatchNormalization)
           else type(layer).__name__,
           _kinds(layer.layers) if isinstance(layer, keras.Model) else None)
          for layer in layers]


def pair_layers(model, source):
  """([(layer, source layer or None)] of `model`'s layers with weights, "position" or
  "name")."""
  if _kinds(model.layers) == _kinds(source.layers):
    pairs = list(zip(model.layers, source.layers))
    matched_by = "position"
  else:
    by_name = {layer.name: layer for layer in source.layers}
    pairs = [(layer, by_name.get(layer.name)) for layer in model.layers]
    matched_by = "name"
  return [(a, b) for a, b in pairs if a.weights], matched_by
