"""Where registrations come from: the package's own modules and the user's `--plugins`.

A registry is filled by importing the modules that register into it. The package's
modules are listed once here; a researcher's module (a name on PYTHONPATH, or a path to
a .py file) joins them with `--plugins=my_ideas.mixup,~/ideas/sam2.py`, so trying an
idea needs no edit inside research/.
"""

import hashlib
import importlib
import importlib.util
import os
import pkgutil
import re
import sys
import sysconfig
import traceback

import keras
import tensorflow as tf

from research import augment, config as config_lib, data, footprint, gradients, hooks, losses
from research import metrics
from research import models, optim
from research import precision, probes, regularizers, sources, steps
from research.config import ConfigError, as_flags, is_plugin_file, reason
from research.models import backbones
from research.registry import SpecError

# Importing each fills its registries; `registries()` maps flags to them. Every module
# of research/ideas (one idea per file) is imported after these.
BUILTIN_MODULES = ("research.augment", "research.policies", "research.gradients",
                   "research.losses", "research.metrics", "research.probes",
                   "research.regularizers", "research.steps", "research.optim",
                   "research.models", "research.actions", "research.tensorboard_hooks",
                   "research.sources.datasets")
IDEAS_PACKAGE = "research.ideas"


class PluginError(ImportError):
  """A `--plugins` entry that cannot be imported; the message says which and why."""


def load(plugins=()):
  """Imports the built-in modules, then each of `plugins` (idempotent)."""
  for name in BUILTIN_MODULES:
    importlib.import_module(name)
  ideas = importlib.import_module(IDEAS_PACKAGE)
  for info in pkgutil.iter_modules(ideas.__path__):
    importlib.import_module(f"{IDEAS_PACKAGE}.{info.name}")
  for plugin in plugins:
    _import(plugin)


def _import(plugin):
  path = os.path.expanduser(plugin)
  try:
    if is_plugin_file(path):
      # Named by the file's place too: two experiments' ideas.py are two modules.
      where = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:8]
      name = f"research_plugin_{os.path.splitext(os.path.basename(path))[0]}_{where}"
      if name in sys.modules:
        return sys.modules[name]
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} is a directory: name its .py files" if
                                os.path.isdir(path) else f"no file {path!r}")
      spec = importlib.util.spec_from_file_location(name, path)
      module = importlib.util.module_from_spec(spec)
      sys.modules[name] = module
      try:
        spec.loader.exec_module(module)
      except BaseException:
        del sys.modules[name]
        raise
      return module
    return importlib.import_module(plugin)
  except Exception as e:  # pylint: disable=broad-except  (any error of the user's module)
    where = _raised_at(e)
    if where is None:  # Not found, or not importable: no line of the user's raised it.
      raise PluginError(f"--plugins: cannot import {plugin!r} "
                        f"({type(e).__name__}: {e})") from e
    raise PluginError(f"--plugins: {where[0]} line {where[1]} raised "
                      f"{type(e).__name__}: {_message(e)}") from e


def _raised_at(error):
  """(file, line) of the user's code where importing a plugin raised `error`: a syntax
  error's own place, else the innermost frame outside Python's, the installed packages'
  and this package's files; None when none is the user's (no such module)."""
  if isinstance(error, SyntaxError) and error.filename and error.lineno:
    return error.filename, error.lineno
  frames = [frame for frame in traceback.extract_tb(error.__traceback__)
            if not frame.filename.startswith(_NOT_USER_CODE)]
  return (frames[-1].filename, frames[-1].lineno) if frames else None


def _message(error):
  """The error's message in one line; a syntax error's without its place (said before)."""
  return error.msg if isinstance(error, SyntaxError) else reason(error)


# Where the files of a traceback are not a plugin's: the error is named at the line of
# the user's that led there (a duplicate registration at its decorator, not in registry.py).
_NOT_USER_CODE = ("<", os.path.dirname(os.path.abspath(__file__)) + os.sep) + tuple(
    sorted({os.path.join(sysconfig.get_paths()[key], "") for key in ("stdlib", "purelib",
                                                                     "platlib")}))


def registries():
  """{flag name: (registry, takes a list)} of every flag that names registry items."""
  return {flag: (registry, many) for flag, (registry, many, _) in _REGISTRIES.items()}


def _classes(config):
  """(count, names) of the data's classes where known before reading it; else two
  placeholders."""
  names = data.class_names_of(config) or ["class_0", "class_1"]
  return len(names), names


def _settings_only(config):  # pylint: disable=unused-argument
  return ()


def _the_config(config):
  return (config,)


# {flag: (registry, takes a list, how validation builds an item)}: a function of the
# config giving the builder's code-supplied arguments, or None where `validate` builds
# it otherwise (the model and the optimizers, with the variables). Metrics get the
# data's classes where they are known without reading it (research.data.class_names_of).
_REGISTRIES = {"model": (models.MODELS, False, None),
               "loss": (losses.LOSSES, False, _settings_only),
               "optimizer": (optim.OPTIMIZERS, False, None),
               "param_rules": (optim.RULES, True, _the_config),
               "grad_transforms": (gradients.GRAD_TRANSFORMS, True, _settings_only),
               "schedule": (optim.SCHEDULES, False, None),
               "step": (steps.STEPS, False, _settings_only),
               "augment": (augment.AUGMENTATIONS, True, _settings_only),
               "metrics": (metrics.METRICS, True, _classes),
               "probes": (probes.PROBES, True, _settings_only),
               "regularizers": (regularizers.REGULARIZERS, True, _settings_only),
               "hooks": (hooks.HOOKS, True, _the_config),
               "actions": (hooks.HOOKS, True, _the_config),
               "dataset": (sources.DATASETS, False, _the_config)}


def validate(config):
  """Imports `config.plugins` and checks every registry item the config names (name,
  parameters, value types, and each builder's own checks) and the model they make,
  before any data is read; returns the config. Once per config: train.py and loop.train
  both ask."""
  if config in _VALID:
    return config
  try:
    load(config.plugin_modules)
  except PluginError as e:
    raise ConfigError(str(e)) from None
  for flag, (registry, many, arguments) in _REGISTRIES.items():
    try:
      specs = registry.parse_list(getattr(config, flag)) if many else [
          registry.parse(getattr(config, flag))]
      for spec in specs if arguments else ():
        item = registry.build(spec, *arguments(config))  # ValueError on bad values.
        smallest = getattr(item, "min_image_size", 0)
        if config.image_size < smallest:
          raise ValueError(f"{spec} needs images of at least {smallest} pixels a side; "
                           f"--image_size is {config.image_size}")
    except (SpecError, ValueError) as e:
      raise ConfigError(f"--{flag}: {e}") from None
  hooks.build(config)  # The order of --actions and --hooks: a cycle, an unknown name.
  _build_optimizers(config)
  _run_augmentations(config)
  if config.weights == "imagenet":  # Refused before any data is read, not after.
    backbones.imagenet_backbone(config.model)
  _check_model(config)
  _VALID.add(config)
  return config


_VALID = set()  # The configs `validate` passed.


def _check_model(config):
  """Builds --model on the data's classes (as known before reading it) and the step and
  optimizers around it, so that what depends on its layers is refused before any data
  is read: a builder's refusal or the image size, a head for --freeze_epochs, a variable
  for each --param_rules item, one optimizer under mixed_float16, the activations'
  memory on a CPU. Keras' names and seeds start afresh after it, as they would without it. Not
  under multi_worker (see _build_optimizers)."""
  if config.strategy == "multi_worker":
    return
  nominal = config.resolve(config.batch_size, _classes(config)[0]).replace(
      precision=precision.chosen(config.precision))
  policy = keras.mixed_precision.global_policy()
  try:
    model = models.build(nominal)
    if config.low_res_epochs:
      _check_low_res(config, model)
    rules = optim.variable_rules(nominal, model)
    steps.StepSpec.from_config(nominal, model, rules)
    optim.build(nominal, model, rules)
    too_large = (not tf.config.list_physical_devices("GPU")
                 and footprint.activations_error(nominal, model, nominal.batch_size))
  finally:
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)
  if too_large:
    raise ConfigError(too_large)


def _check_low_res(config, model):
  for size in config.low_res_sizes:
    try:
      models.at_image_size(model, size)
    except ValueError as e:
      raise ConfigError(f"--low_res_size={config.low_res_image_size}: --model="
                        f"{config.model} cannot take images of {size} px: "
                        f"{reason(e)}") from None


def _build_optimizers(config):
  """Builds --optimizer and every rule's own optimizer once, at a constant rate, so that
  the builders' checks of their settings run before any data is read. Not under
  multi_worker: the optimizer's variable would start the runtime before the strategy."""
  if config.strategy == "multi_worker":
    return
  items = {config.optimizer: "optimizer"}
  for spec in optim.rule_specs(config):
    items.setdefault(optim.RULES.build(spec, config).optimizer or config.optimizer,
                     "param_rules")
  for item, flag in items.items():
    try:
      optim.OPTIMIZERS.build(item, config.learning_rate, config)
    except ValueError as e:
      raise ConfigError(f"--{flag}: optimizer {item}: {e}") from None


def _run_augmentations(config):
  """Runs --augment once on two blank images as training runs it (in a tf.data map),
  so that an op that cannot run (a plugin's bug) is one error line before any data is
  read, not a traceback after it. Not under multi_worker (see _build_optimizers)."""
  size, count = config.image_size, _classes(config)[0]
  if config.strategy == "multi_worker" or not config.augment:
    return
  ops = augment.pipeline(config.augment, config.seed)
  blank = {"image": tf.zeros([2, size, size, 3]), "label": tf.zeros([2], tf.int32),
           "target": tf.one_hot([0, 0], count), "index": tf.range(2)}
  step = tf.constant(0, tf.int64)
  run = lambda batch: ops(batch, tf.constant([config.seed, 0], tf.int64),
                          ops.context(step, step, 2))
  try:
    images = tf.data.Dataset.from_tensors(blank).map(run).get_single_element()["image"]
  except Exception as e:  # pylint: disable=broad-except  (any error of an op's code)
    raise ConfigError(f"--augment: {config.augment} fails on 2 blank {size}x{size} "
                      f"images ({_one_line(e)})") from None
  if images.shape != (2, size, size, 3) or images.dtype != tf.float32:
    raise ConfigError(f"--augment: {config.augment} turns float32 images of shape "
                      f"(2, {size}, {size}, 3) into {images.dtype.name} of shape "
                      f"{tuple(images.shape)}; the model takes the former")


def _one_line(error):
  """`error` in one line. A graph's error while tracing is "in user code:", the stack
  and at its end the error itself: then the error and the innermost user file's line."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines or lines[0] != "in user code:":
    return f"{type(error).__name__}: {reason(error)}"
  where = [match.groups() for match in map(re.compile(r'File "(.+)", line (\d+)').match, lines)
           if match]
  return lines[-1] + (" at {}:{}".format(*where[-1]) if where else "")


def model_defaults(config):
  """The training defaults of --model, its --plugins imported (a plugin may register it)."""
  try:
    load(config.plugin_modules)
    return models.defaults_of(config.model)
  except PluginError as e:
    raise ConfigError(str(e)) from None
  except SpecError as e:
    raise ConfigError(f"--model: {e}") from None


def from_flagfile(path, **overrides):
  """The Config `train.py --flagfile=path` runs: the flagfile's fields, then `overrides`
  as flags after it, and --model's training defaults for the others."""
  config, explicit = config_lib.read_flagfile(path)
  config = config.replace(**overrides)
  return config.with_model_defaults(model_defaults(config), explicit | set(overrides))


def listing(flag=None):
  """Every registered item of `flag` (or of every flag) with its parameters; each model
  with the training defaults it takes for the flags a run does not set."""
  notes = {"model": {name: "training defaults: " + (as_flags(models.defaults_of(name))
                                                    or "none (the flags' own)")
                     for name in models.MODELS.names()}}
  out = []
  for name, (registry, many) in registries().items():
    if flag in (None, name):
      out.append(f"--{name}{' (comma-separated)' if many else ''}:\n"
                 f"{registry.describe(notes.get(name))}")
  return "\n".join(out)
