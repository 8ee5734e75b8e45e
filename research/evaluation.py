"""Scores a finished run's saved model on any folder of labelled images."""

import json
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from research import data as data_lib, model_dir as model_dir_lib, models, plugins, predict
from research.config import Config, reason


class Unfinished(data_lib.DataError):
  """A run without model.keras yet: the message says how to finish or read it."""


# What a script scores of a run: model.keras, or the newest checkpoint's raw weights.
# "final" is another name of "model" (model.keras), accepted in commands that use it.
WEIGHTS = ("model", "checkpoint", "final")


def load_run(model_dir, weights="model", flag="--weights"):
  """(config, class names, keras model) of a run: every script that reads a run loads
  it here.

  weights="model" (or "final"): its model.keras (EMA or Lookahead weights where on);
  "checkpoint": the model built from its config, with the newest checkpoint's raw
  weights (works before the run has finished, or when model.keras is damaged). `flag`
  is the caller's name for this choice, which the advice in the errors names.
  """
  if weights not in WEIGHTS:
    raise data_lib.DataError(f"{flag}={weights!r} is not one of: model, checkpoint")
  config, class_names = _run_config(model_dir)
  if weights == "checkpoint":
    model = models.build(config)
    restore_checkpoint_weights(model_dir, model)
    return config, class_names, model
  return config, class_names, _load_model_keras(model_dir, flag)


def _run_config(model_dir):
  """(config, class names) of the run in `model_dir`, its plugins loaded."""
  problem = model_dir_lib.run_problem(model_dir)
  if problem:
    raise data_lib.DataError(problem)
  config_path = os.path.join(model_dir, "config.json")
  try:
    config = Config.load(config_path)
  except (ValueError, TypeError) as e:  # Not JSON, or not a config's JSON.
    raise data_lib.DataError(f"{config_path} is damaged ({reason(e)}): it holds the run's "
                             "settings, which build its model; restore it") from None
  try:
    plugins.load(config.plugin_modules)  # Custom layers of the run's models and plugins.
  except plugins.PluginError as e:  # Moved, renamed or broken since the run.
    raise data_lib.DataError(f"{model_dir}: {e} (the run was trained with it)") from None
  try:
    with open(os.path.join(model_dir, "classes.json")) as f:
      return config, json.load(f)
  except (OSError, ValueError) as e:  # Written with config.json: deleted or damaged since.
    raise data_lib.DataError(f"{model_dir}: its classes.json cannot be read ({reason(e)}); "
                             "it lists the run's class names, one per output: restore it") from None


def _load_model_keras(model_dir, flag):
  """The run's model.keras; its absence or damage explained, with the way forward."""
  path = os.path.join(model_dir, "model.keras")
  checkpoint = latest_checkpoint(model_dir)
  use_checkpoint = (f"pass {flag}=checkpoint to use its newest checkpoint"
                    if checkpoint else "it has no checkpoint either")
  if not os.path.exists(path):
    raise Unfinished(
        f"{model_dir!r} has no model.keras: the run has not finished. Rerun its training "
        f"command to finish it, or {use_checkpoint}")
  try:
    return keras.models.load_model(path)
  except Exception as e:  # pylint: disable=broad-except  (a torn zip fails in many ways)
    raise data_lib.DataError(
        f"{path} is damaged ({reason(e)}). Rerun the run's training command, which saves it "
        f"again from the last checkpoint, or {use_checkpoint}") from None


def latest_checkpoint(model_dir):
  """The path of the run's newest checkpoint, or None."""
  return tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))


def restore_checkpoint_weights(model_dir, model):
  """Loads the newest checkpoint's raw weights into `model` (not the EMA average)."""
  path = latest_checkpoint(model_dir)
  if path is None:
    raise data_lib.DataError(f"no checkpoint in {os.path.join(model_dir, 'checkpoints')!r}: "
                             "the run stopped before its first one")
  try:
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
  except (tf.errors.OpError, ValueError) as e:
    raise data_lib.DataError(f"checkpoint {path} is unreadable "
                             f"({reason(e)})") from None
  return path


def score_folder(model_dir, data_dir, batch_size=256, cache_dir="", tta_mode=None,
                 weights="model", split="all", skip_bad_images=False):
  """Top-1/top-5 accuracy of the run's model on `data_dir` (class subfolders).

  The folder's classes are matched to the model's by name; it may hold a subset.
  `tta_mode` overrides the run's --tta; `weights="checkpoint"` scores the newest
  checkpoint's raw weights instead of model.keras (EMA weights where EMA was on);
  `split="validation"` scores only the run's held-out split of the folder (with the
  run's --skip_bad_images, as it was split; no `data_dir`: the run's own folder);
  `skip_bad_images` scores the readable images of `split="all"` and lists the others.
  The result names the folder and the split scored; non-finite outputs raise
  predict.NonFiniteError.
  """
  config, class_names, model = load_run(model_dir, weights)
  tta_mode = tta_mode or config.tta
  split_name = split
  if not data_dir:
    if split_name != "validation" or config.dataset != "folder":
      raise data_lib.DataError("--data_dir=DIR is needed: a folder of the run's classes to "
                               "score (--split=validation alone scores a folder run's "
                               "held-out split of its own folder)")
    data_dir = config.data_dir
  skip_bad_images = config.skip_bad_images if split_name == "validation" else skip_bad_images
  split, folder_names = data_lib.load_folder(data_dir, config.image_size, cache_dir,
                                             skip_bad_images)
  if split_name == "validation":
    if config.dataset != "folder":
      raise data_lib.DataError(
          f"the run trained on --dataset={config.dataset}, whose held-out split is not "
          "this folder's (--split=validation re-derives a folder run's): use a folder of "
          "held-out images with --split=all")
    if not config.val_split:
      raise data_lib.DataError("the run had no validation split (--val_split=0)")
    if os.path.realpath(config.data_dir) != os.path.realpath(data_dir):
      logging.warning("the run trained on %s: its held-out split is taken from %s's files "
                      "by the same rule, so they must be the same files", config.data_dir,
                      data_dir)
    change = model_dir_lib.listing_change(model_dir, data_dir, split.listed_files)
    if change:
      raise data_lib.DataError(f"{change}: the run's held-out split cannot be drawn from "
                               "it again. Score a folder of held-out images with --split=all")
    split = data_lib.split_validation(split, config.val_split, folder_names)[1]
  unknown = sorted(set(folder_names) - set(class_names))
  if unknown:
    raise data_lib.DataError(f"classes not known to the model: {', '.join(unknown)}")
  to_model = np.array([class_names.index(n) for n in folder_names], np.int32)
  labels = to_model[split.labels]

  probs = predict.probabilities(model, split.images, tta_mode, batch_size)
  predict.require_finite(probs)  # NaN would score as class 0: a silent 1 / classes.
  top5 = np.argsort(-probs, axis=-1)[:, :min(5, probs.shape[-1])]
  return {"accuracy": float(np.mean(probs.argmax(-1) == labels)),
          "top5": float(np.mean(np.any(top5 == labels[:, None], axis=-1))),
          "examples": len(split), "data_dir": data_dir, "split": split_name}
