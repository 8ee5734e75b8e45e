"""Progressive resizing (--low_res_epochs): the first epochs at a lower resolution."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import data, loop, models, probes
from research.config import Config, ConfigError
from research.sources.datasets import synthetic


def _images(split, config, start, stop=None):
  ds = data.train_dataset(split, config, start, None, stop_step=stop)
  return [batch["image"].numpy() for batch in ds]


def test_the_low_res_phase_is_the_full_batches_downscaled_then_full_size():
  split, _ = synthetic(96, 16, 4)  # 6 steps an epoch of 16.
  full = Config(batch_size=16, train_steps=9, augment="crop,flip,cutout", seed=3,
                image_size=16).resolve(96, 4)
  low = full.replace(low_res_epochs=0.5, low_res_size=12).resolve(96, 4)
  assert low.low_res_steps == 3
  assert [low.image_size_at(s) for s in (0, 2, 3, 8)] == [12, 12, 16, 16]
  reference = _images(split, full, 0)
  first, then = _images(split, low, 0), _images(split, low, 3)  # Each stops at its phase's end.
  assert len(first) == 3 and len(then) == 6
  for got, whole in zip(first, reference):  # The same examples, augmented alike.
    np.testing.assert_allclose(got, tf.image.resize(whole, (12, 12), antialias=True),
                               atol=1e-4)
  for got, whole in zip(then, reference[3:]):
    np.testing.assert_array_equal(got, whole)
  with pytest.raises(ValueError, match="span two image sizes"):
    data.train_dataset(split, low, 1, None, stop_step=5)


def test_the_crop_mode_takes_a_full_scale_window_of_each_image_drawn_per_example():
  split, _ = synthetic(96, 16, 4)
  full = Config(batch_size=16, train_steps=6, augment="crop,flip", seed=3,
                image_size=16).resolve(96, 4)
  low = full.replace(low_res_epochs=0.5, low_res_size=10, low_res_mode="crop").resolve(96, 4)
  reference, first = _images(split, full, 0), _images(split, low, 0)
  assert first[0].shape == (16, 10, 10, 3)
  windows = set()
  for got, whole in zip(first, reference):
    for image, source in zip(got, whole):
      found = [(y, x) for y in range(7) for x in range(7)
               if np.array_equal(image, source[y:y + 10, x:x + 10])]
      assert found, "not a window of its full-size image"
      windows.add(found[0])
  assert len(windows) > 10  # Drawn per example, not once a batch.
  np.testing.assert_array_equal(first[2], _images(split, low, 2)[0])  # By the step alone.


def test_stages_rise_evenly_toward_the_full_size_each_its_own_pipeline():
  split, _ = synthetic(96, 16, 4)  # 6 steps an epoch of 16.
  full = Config(batch_size=16, train_steps=9, augment="crop,flip", seed=3,
                image_size=16).resolve(96, 4)
  low = full.replace(low_res_epochs=1.0, low_res_size=8, low_res_stages=3).resolve(96, 4)
  assert low.low_res_sizes == [8, 10, 13]
  assert low.size_phases() == [(2, 8), (4, 10), (6, 13), (9, 16)]
  assert [low.phase_end(s) for s in (0, 1, 2, 5, 6, 8)] == [2, 2, 4, 6, 9, 9]
  assert low.training_work(0, 9) == pytest.approx(
      2 * (8 / 16) ** 2 + 2 * (10 / 16) ** 2 + 2 * (13 / 16) ** 2 + 3)
  assert low.training_work(3, 7) == pytest.approx((10 / 16) ** 2 + 2 * (13 / 16) ** 2 + 1)
  reference = _images(split, full, 0)
  for start, size in ((0, 8), (2, 10), (4, 13)):
    got = _images(split, low, start)
    assert len(got) == 2  # Each pipeline stops at its stage's end.
    for image, whole in zip(got, reference[start:]):
      np.testing.assert_allclose(image, tf.image.resize(whole, (size, size), antialias=True),
                                 atol=1e-4)
  # Stages of one size are one phase; one shorter than an update is dropped.
  same = full.replace(low_res_epochs=1.0, low_res_size=15, low_res_stages=3).resolve(96, 4)
  assert same.size_phases() == [(6, 15), (9, 16)]
  short = full.replace(low_res_epochs=0.2, low_res_size=8, low_res_stages=2).resolve(96, 4)
  assert short.size_phases() == [(1, 8), (9, 16)]  # 1 step: the second stage has none.
  # A run shorter than the low-res phase (--train_steps=3 of it) is low-res to its end.
  cut = low.replace(train_steps=3)
  assert [cut.image_size_at(s) for s in (1, 2, 3)] == [8, 10, 10] and cut.phase_end(2) == 4


@pytest.mark.parametrize("overrides, size, steps", [
    (dict(), 12, 3),                          # Three quarters of --image_size by default.
    (dict(grad_accum_steps=2), 12, 4),        # Whole updates: none mixes two sizes.
    (dict(low_res_size=8, grad_accum_steps=3), 8, 3),
])
def test_the_phase_is_whole_updates_and_its_size_defaults(overrides, size, steps):
  config = Config(image_size=16, batch_size=32, low_res_epochs=0.6,
                  **overrides).resolve(160, 4)  # 5 steps an epoch: 0.6 epochs are 3.
  assert (config.low_res_image_size, config.low_res_steps) == (size, steps)


@pytest.mark.parametrize("overrides, message", [
    (dict(low_res_epochs=-1.0), "--low_res_epochs must be >= 0"),
    (dict(low_res_epochs=1.0, low_res_size=16), "--low_res_size must be smaller than "
                                                "--image_size=16, got 16"),
    (dict(low_res_epochs=1.0, low_res_size=-4), "--low_res_size must be >= 0, got -4"),
    (dict(low_res_epochs=1.0, low_res_stages=0), "--low_res_stages must be >= 1, got 0"),
    (dict(low_res_epochs=1.0, low_res_mode="blur"), "--low_res_mode='blur' is not one of"),
])
def test_bad_settings_are_one_line(make_config, overrides, message):
  with pytest.raises(ConfigError, match=message):
    make_config(**overrides)


def test_a_model_that_cannot_take_the_low_res_size_is_refused_before_any_data(make_config):
  # Its position embeddings are for (16 / 4)^2 patches; 12 px gives 9.
  with pytest.raises(ConfigError, match=r"--low_res_size=12: --model=vit\(.*\) cannot take "
                                        r"images of 12 px"):
    make_config(model="vit(patch_size=4, dim=16, depth=1, heads=2)", low_res_epochs=0.5,
                low_res_size=12)


def test_the_copy_at_another_size_shares_every_variable():
  model = models.build(Config(model="resnet8", image_size=16, num_classes=3))
  low = models.at_image_size(model, 12)
  assert low is models.at_image_size(model, 12)  # Made once.
  assert models.at_image_size(model, 16) is model
  assert [id(v) for v in low.variables] == [id(v) for v in model.variables]
  assert low(tf.zeros([2, 12, 12, 3])).shape == (2, 3)


TRACED_SIZES = []


@probes.PROBES.register("test_traced_image_size")
def _traced_image_size():
  """Records the size of the images each trace of the step trains on."""
  def values(step):
    TRACED_SIZES.append(step.batch["image"].shape[1])
    return {"test_traced_image_size": tf.constant(0.0)}
  return probes.Probe(values)


def test_a_run_trains_at_low_res_then_full_size_and_saves_the_full_size_model(
    make_config, caplog):
  # 190 training examples, 5 steps an epoch: the first 3 at 12 px.
  config = make_config(low_res_epochs=0.6, train_steps=6, probes="test_traced_image_size")
  TRACED_SIZES.clear()
  with caplog.at_level("INFO"):
    result = loop.train(config)
  assert TRACED_SIZES[0] == 12 and TRACED_SIZES[-1] == 16, TRACED_SIZES
  assert result.step == 6 and np.isfinite(result.final_eval["loss"])
  assert "step 3: training at 16 px from here (the low-res phase, --low_res_epochs, is over)" \
      in caplog.text
  saved = keras.models.load_model(f"{config.model_dir}/model.keras")
  assert saved.inputs[0].shape[1:3] == (16, 16)
