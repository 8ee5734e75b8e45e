"""--plugins: a researcher's module outside research/ joins the registries and trains."""

import inspect
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from research import augment, loop, plugins
from research.config import ConfigError
from tests.conftest import ROOT
from tests.test_cli import run

PLUGIN = '''
"""An idea outside the package: an augmentation that inverts a random part of the batch."""
import tensorflow as tf
from research.augment import AUGMENTATIONS, on_images

@AUGMENTATIONS.register("invert_some")
def invert_some(fraction=0.5):
  """Inverts the pixels of a random `fraction` of the images."""
  def fn(images, seed):
    chosen = tf.random.stateless_uniform([tf.shape(images)[0]], seed=seed) < fraction
    return tf.where(chosen[:, None, None, None], 255.0 - images, images)
  return on_images(fn)
'''


def test_a_plugin_file_registers_and_trains(tmp_path, make_config):
  path = tmp_path / "my_idea.py"
  path.write_text(textwrap.dedent(PLUGIN))
  config = make_config(plugins=str(path), augment="crop,invert_some(fraction=0.25)")
  plugins.validate(config)
  assert "invert_some" in augment.AUGMENTATIONS
  history = loop.train(config).train_history
  assert np.isfinite(history[-1][1]["loss"])
  # Loading it again (a second run in this process) is a no-op, not a duplicate.
  plugins.validate(config)


def test_two_plugin_files_of_the_same_name_are_both_imported(tmp_path):
  """Two experiments' ideas.py: the second is its own module, not the first again."""
  for folder, name in (("exp1", "invert_exp1"), ("exp2", "invert_exp2")):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "ideas.py").write_text(
        textwrap.dedent(PLUGIN).replace("invert_some", name))
  plugins.load([str(tmp_path / "exp1" / "ideas.py"), str(tmp_path / "exp2" / "ideas.py")])
  assert "invert_exp1" in augment.AUGMENTATIONS and "invert_exp2" in augment.AUGMENTATIONS


def test_the_cli_takes_plugins_and_lists_their_items(tmp_path):
  path = tmp_path / "my_idea2.py"
  path.write_text(textwrap.dedent(PLUGIN).replace("invert_some", "invert_more"))
  result = run("train.py", f"--plugins={path}", "--list=augment")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "invert_more(fraction=0.5)  Inverts the pixels" in result.stdout
  assert "crop(padding=4)" in result.stdout


def test_a_broken_plugin_is_one_error_line_naming_its_line(tmp_path):
  path = tmp_path / "broken.py"
  path.write_text("import math\n\nratio = 1 / 0\n")
  result = run("train.py", f"--plugins={path}", f"--model_dir={tmp_path / 'run'}",
               "--dataset=synthetic")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: --plugins: {path} line 3 raised ZeroDivisionError: division by zero")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("code, message", [
    ("import no_such_package_xyz\n",
     "{path} line 1 raised ModuleNotFoundError: No module named 'no_such_package_xyz'"),
    ("def f(:\n  pass\n", "{path} line 1 raised SyntaxError: invalid syntax"),
    # A duplicate name: at the plugin's decorator, not inside research/registry.py.
    ("from research.augment import AUGMENTATIONS\n\n@AUGMENTATIONS.register('crop')\n"
     "def crop():\n  pass\n",
     "{path} line 3 raised ValueError: augmentation 'crop' is already registered"),
    # Raised in a module the plugin imports: that module's line.
    ("import helper_of_broken\n", "{helper} line 2 raised KeyError: 'k'"),
])
def test_a_plugin_that_raises_is_named_by_file_and_line(tmp_path, monkeypatch, code,
                                                        message):
  (tmp_path / "helper_of_broken.py").write_text("def g():\n  return {}['k']\ng()\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  path = tmp_path / "broken_idea.py"
  path.write_text(code)
  expected = message.format(path=path, helper=tmp_path / "helper_of_broken.py")
  with pytest.raises(plugins.PluginError) as raised:
    plugins.load([str(path)])
  assert str(raised.value) == f"--plugins: {expected}"
  with pytest.raises(plugins.PluginError, match=r"cannot import 'no_such_module_xyz' "
                                                r"\(ModuleNotFoundError"):
    plugins.load(["no_such_module_xyz"])
  with pytest.raises(plugins.PluginError, match=r"FileNotFoundError: '.*' is a directory: "
                                                r"name its .py files"):
    plugins.load([str(tmp_path) + "/"])


def test_the_model_listing_shows_each_models_training_defaults(monkeypatch):
  from research import models  # pylint: disable=g-import-not-at-top
  monkeypatch.delitem(models.TRAINING_DEFAULTS, "baseline_cnn_aux")  # As a plugin's model.
  text = plugins.listing("model")
  assert ("  resnet8(zero_init_residual=False)  He et al.'s CIFAR ResNet-8: "
          "1 basic block per stage, widths 16/32/64.\n      training defaults: --augment=crop,flip "
          "--batch_size=128 --epochs=30.0 ") in text
  assert "baseline_cnn_aux()  The tutorial's CNN with an auxiliary classifier on its " \
         "second conv block.\n      training defaults: none (the flags' own)" in text


def test_every_registered_item_has_a_description():
  """--list prints each item's first docstring line: an item without one is a bare name."""
  for flag, (registry, _) in plugins.registries().items():
    for name in registry.names():
      assert (inspect.getdoc(registry.get(name)) or "").strip(), f"--{flag}: {name}"


def test_no_import_cycle_and_no_registration_by_import_order():
  # config imports no registry; hooks does not import its hooks; a fresh process.
  code = ("import sys; import research.config, research.hooks; "
          "print(sorted(m for m in sys.modules if m.startswith('research')))")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(["research", "research.config", "research.files",
                                       "research.footprint", "research.hooks",
                                       "research.registry"])


def test_the_tests_of_every_registered_item_run_on_a_plugins_items(tmp_path):
  path = tmp_path / "my_idea3.py"
  path.write_text(textwrap.dedent(PLUGIN).replace("invert_some", "invert_tested"))
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--plugins={path}",
       "-k", "invert_tested", "tests/test_augment.py"], cwd=ROOT, capture_output=True,
      text=True, check=False)
  assert result.returncode == 0, result.stdout[-2000:]
  # Three tests run on every augmentation; the sharding one skips ops like this one.
  assert "2 passed, 1 skipped" in result.stdout


METRIC_PLUGIN = '''
from research.metrics import METRICS, Metric

@METRICS.register("top_k_checked")
def top_k_checked(num_classes, class_names, k=2):
  if not 1 <= k <= num_classes:
    raise ValueError(f"top_k_checked: k must be in [1, {num_classes}], got {k}")
  return METRICS.build("top5", num_classes, class_names)
'''


def test_metrics_are_checked_against_the_folders_classes(tmp_path, make_config):
  path = tmp_path / "top_k_checked.py"
  path.write_text(textwrap.dedent(METRIC_PLUGIN))
  folder = tmp_path / "images"
  for name in ("cat", "dog", "owl", ".ipynb_checkpoints"):
    (folder / name).mkdir(parents=True)
  make = lambda k: make_config(plugins=str(path), dataset="folder", data_dir=str(folder),
                               metrics=f"top_k_checked(k={k})")
  make(3)  # Three classes: before, two placeholder classes refused k=3.
  with pytest.raises(ConfigError, match=r"k must be in \[1, 3\], got 4"):
    make(4)


BUGGY_AUGMENTATIONS = '''
import tensorflow as tf
from research.augment import AUGMENTATIONS, on_images

@AUGMENTATIONS.register("wrong_axis")
def wrong_axis():
  return on_images(lambda images, seed: tf.reverse(images, axis=[4]))

@AUGMENTATIONS.register("shrinks")
def shrinks():
  return on_images(lambda images, seed: images[:, 1:, 1:])
'''


@pytest.fixture(scope="module")
def buggy_plugin(tmp_path_factory):
  """One file for every case: a second file registering the same names is refused."""
  path = tmp_path_factory.mktemp("plugin") / "buggy.py"
  path.write_text(textwrap.dedent(BUGGY_AUGMENTATIONS))
  return path


@pytest.mark.parametrize("augment, message", [
    ("wrong_axis", r"--augment: crop,wrong_axis fails on 2 blank 16x16 images \(ValueError: "
                   r"'axis'\[0\] = 4 is out of valid range.* at .*buggy.py:7\)"),
    ("shrinks", r"turns float32 images of shape \(2, 16, 16, 3\) into float32 of shape "
                r"\(2, 15, 15, 3\)"),
])
def test_an_augmentation_that_cannot_run_is_refused_before_the_data(
    buggy_plugin, make_config, augment, message):
  path = buggy_plugin
  with pytest.raises(ConfigError, match=message):
    make_config(plugins=str(path), augment=f"crop,{augment}")
  make_config(plugins=str(path), augment="crop")  # The plugin's other items are fine.
