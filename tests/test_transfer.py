"""Transfer learning: backbones, --weights, --init_from, --freeze_epochs and
--backbone_lr_scale."""

import json
import logging
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from research import data, distribute, loop, models, optim, steps, transfer
from research.config import Config, ConfigError
from research.models import backbones
from tests.conftest import make_runner, tiny_config


def _batch(num_classes, size=16, n=8, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  return {"image": tf.constant(rng.integers(0, 256, (n, size, size, 3)), tf.float32),
          "label": tf.constant(labels),
          "target": tf.one_hot(labels, num_classes)}


# convnext_tiny's and resnet50's builds are tested in test_models (resnet50's caffe
# preprocessing below); their 28M and 25M parameters would take a minute of eager steps
# here to show what the two small ones show.
@pytest.mark.parametrize("name", sorted(set(backbones.BACKBONES)
                                        - {"convnext_tiny", "resnet50"}))
def test_a_backbone_learns_a_batch_at_another_input_size(name, make_config):
  # 16x16 images resized to the backbone's 32 inside the model; eager steps of the
  # training step's own forward and backward pass (compiling these is minutes). Seeded:
  # BatchNorm on 16 images at 1x1 resolution makes a few steps' losses noisy.
  keras.utils.set_random_seed(0)
  config = make_config(model=f"{name}(input_size=32)", optimizer="adam", batch_size=16,
                       learning_rate=1e-3, weight_decay=0.0).resolve(256, 3)
  state, runner = make_runner(config)
  assert state.model.input_shape == (None, 16, 16, 3)
  assert state.model.get_layer("backbone").input_shape == (None, 32, 32, 3)
  batch, losses = _batch(3, n=16), []
  for _ in range(5):
    result = steps.forward_backward(state, runner.spec, batch)
    state.optimizer.apply_gradients(zip(result.grads, state.model.trainable_variables))
    losses.append(float(result.loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_the_resnet50_preprocessing_is_keras_own():
  images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
  ours = backbones.CaffePreprocessing()(images)
  np.testing.assert_allclose(ours, keras.applications.resnet50.preprocess_input(images.copy()),
                             atol=1e-4)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 6-step run of 4 classes, trained once for the --init_from tests."""
  config = tiny_config(tmp_path_factory.mktemp("finished"), num_classes=4)
  loop.train(config)
  return config.model_dir


@pytest.fixture
def source_dir(finished_run, tmp_path):
  """This test's own copy of `finished_run`, in tmp_path/source."""
  shutil.copytree(finished_run, tmp_path / "source")
  return tmp_path / "source"


def test_init_from_loads_matching_variables_and_a_new_head(make_config, source_dir):
  source = keras.models.load_model(source_dir / "model.keras")
  config = make_config(init_from=str(source_dir), num_classes=3, train_steps=1,
                       learning_rate=1e-9, eval_every=1)
  loop.train(config)
  record = json.load(open(os.path.join(config.model_dir, transfer.RECORD_FILE)))
  assert record["matched_by"] == "position"
  assert [entry["variable"] for entry in record["new"]] == ["logits/kernel", "logits/bias"]
  assert "the classes differ" in record["new"][0]["reason"]
  target = keras.models.load_model(os.path.join(config.model_dir, "model.keras"))
  assert len(record["loaded"]) == len(target.weights) - 2
  # Every loaded weight is the source's (one step at lr 1e-9 and BatchNorm's moving
  # statistics aside: compare the convolution kernels).
  kernels = lambda m: [w.numpy() for w in m.weights if len(w.shape) == 4]
  for ours, theirs in zip(kernels(target), kernels(source)):
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_init_from_keeps_the_head_when_the_classes_are_the_same(make_config, source_dir,
                                                                tmp_path):
  config = make_config(init_from=str(source_dir), num_classes=4, train_steps=1)
  split = data.load(config)
  config = config.replace(model_dir=str(tmp_path / "target")).resolve(
      len(split.train), len(split.class_names))
  state, _ = make_runner(config, class_names=split.class_names)
  record = transfer.initialize(state.model, config, split.class_names, write=False)
  assert record["new"] == []
  source = keras.models.load_model(source_dir / "model.keras")
  for ours, theirs in zip(state.model.weights, source.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_init_from_a_stopped_run_names_and_takes_init_weights_checkpoint(make_config,
                                                                         source_dir, tmp_path):
  checkpoint = keras.models.clone_model(keras.models.load_model(source_dir / "model.keras"))
  tf.train.Checkpoint(model=checkpoint).restore(
      tf.train.latest_checkpoint(source_dir / "checkpoints")).expect_partial()
  os.remove(source_dir / "model.keras")  # As Ctrl-C leaves a run: checkpoints only.
  with pytest.raises(ConfigError, match=r"no model.keras\): finish it by rerunning its "
                     r"command, or pass --init_weights=checkpoint"):
    make_config(init_from=str(source_dir))
  config = make_config(init_from=str(source_dir), init_weights="checkpoint", num_classes=4,
                       model_dir=str(tmp_path / "target"))
  split = data.load(config)
  config = config.resolve(len(split.train), len(split.class_names))
  state, _ = make_runner(config, class_names=split.class_names)
  record = transfer.initialize(state.model, config, split.class_names, write=False)
  assert record["source"] == f"--init_from={source_dir} --init_weights=checkpoint"
  assert record["new"] == []
  for ours, theirs in zip(state.model.weights, checkpoint.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_init_from_another_architecture_matches_by_name(make_config, tmp_path):
  # The same backbone under another head (no dropout layer): the layer lists differ, the
  # backbone's names do not.
  source_config = make_config(model="mobilenet_v3_small(input_size=32, dropout=0.0)",
                              model_dir=str(tmp_path / "source"), num_classes=4)
  os.makedirs(source_config.model_dir)
  source_config.save(os.path.join(source_config.model_dir, "config.json"))
  json.dump(list("abcd"), open(os.path.join(source_config.model_dir, "classes.json"), "w"))
  source = models.build(source_config)
  source.save(os.path.join(source_config.model_dir, "model.keras"))
  config = make_config(model="mobilenet_v3_small(input_size=32)",
                       init_from=source_config.model_dir).resolve(192, 3)
  state, _ = make_runner(config)
  record = transfer.initialize(state.model, config, list("xyz"), write=False)
  assert record["matched_by"] == "name"
  assert len(record["loaded"]) == len(state.model.get_layer("backbone").weights)
  assert [e["variable"] for e in record["new"]] == ["logits/kernel", "logits/bias"]
  for ours, theirs in zip(state.model.get_layer("backbone").weights,
                          source.get_layer("backbone").weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_backbone_runs_its_batchnorms_fused_and_computes_what_keras_builds():
  from research.models.batchnorm import FusedBatchNorm  # pylint: disable=g-import-not-at-top
  plain = backbones.application("mobilenet_v3_small", 32)
  fused = models.build(Config(model="mobilenet_v3_small(input_size=32)", num_classes=3,
                              image_size=32)).get_layer("backbone")
  kinds = lambda m: [type(layer) for layer in m.layers]
  norms = [k for k in kinds(plain) if k is keras.layers.BatchNormalization]
  assert len(norms) > 10 and kinds(fused).count(FusedBatchNorm) == len(norms)
  assert keras.layers.BatchNormalization not in kinds(fused)
  rng = np.random.default_rng(0)
  for layer in plain.layers:  # Scales, offsets and moving statistics far from their init.
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in layer.get_weights()])
  fused.set_weights(plain.get_weights())  # What --weights=imagenet does.
  x = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
  expected = plain(x, training=False)
  assert np.all(np.isfinite(expected)) and np.std(expected) > 0.01
  np.testing.assert_allclose(fused(x, training=False), expected, rtol=1e-4, atol=1e-4)


def test_batchnorms_of_nested_models_are_fused_too():
  # pylint: disable-next=g-import-not-at-top
  from research.models.batchnorm import FusedBatchNorm, fuse_batchnorms
  inputs = keras.Input((4, 4, 3))
  inner = keras.Model(inputs, keras.layers.BatchNormalization()(keras.layers.Conv2D(5, 1)(inputs)))
  outer_inputs = keras.Input((4, 4, 3))
  outer = keras.Model(outer_inputs, keras.layers.BatchNormalization()(inner(outer_inputs)))
  fused = fuse_batchnorms(outer)
  assert type(fused.layers[-1]) is FusedBatchNorm
  assert type(fused.layers[1].layers[-1]) is FusedBatchNorm
  assert [w.shape for w in fused.weights] == [w.shape for w in outer.weights]


def test_a_run_saved_with_keras_batchnorm_still_pairs_by_position():
  # Models built before their BatchNorm became FusedBatchNorm: the same network, layer by
  # layer, though Keras named the layers after the other class.
  from research.models.batchnorm import FusedBatchNorm  # pylint: disable=g-import-not-at-top
  def net(batchnorm):
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, batchnorm()(keras.layers.Conv2D(4, 3)(inputs)))
  source, model = net(keras.layers.BatchNormalization), net(FusedBatchNorm)
  assert source.layers[2].name != model.layers[2].name
  pairs, matched_by = transfer.pair_layers(model, source)
  assert matched_by == "position" and pairs[1] == (model.layers[2], source.layers[2])


def test_backbones_of_other_architectures_share_nothing():
  # Same top-level layers, and a first convolution of the same shape in each backbone:
  # pairing by position, or copying a backbone's weights by order, would load it.
  def net(*backbone_layers):
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for layer in backbone_layers:
      x = layer(x)
    backbone = keras.Model(inputs, x, name="backbone")
    outer = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(outer))
    return keras.Model(outer, keras.layers.Dense(2, name="logits")(pooled))
  model = net(keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 1))
  source = net(keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization())
  matched_by, loaded, new = transfer.copy_weights(model, source, same_classes=True)
  assert matched_by == "name"
  assert [e["variable"] for e in new if "backbone" in e["reason"]] == [
      v.path for v in model.get_layer("backbone").weights]
  assert len(loaded) == 2  # The head alone: logits/kernel and logits/bias.
  # The same backbone in both still copies all of it.
  twin = net(keras.layers.Conv2D(4, 3), keras.layers.Conv2D(4, 1))
  matched_by, loaded, new = transfer.copy_weights(twin, model, same_classes=True)
  assert matched_by == "position" and not new and len(loaded) == len(twin.weights)


def _batches(runner, config):
  split = data.load(config)
  return iter(runner.strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(split.train, config, 0, ctx)))


def _weights_of(model, indices):
  variables = model.trainable_variables
  return [variables[i].numpy() for i in indices]


def test_freeze_epochs_trains_the_head_alone_then_everything(make_config):
  # 192 examples / 32 = 6 steps an epoch: the first 3 steps train only the head.
  config = make_config(freeze_epochs=0.5, train_steps=5).resolve(192, 4)
  state, runner = make_runner(config)
  head = runner.spec.head
  backbone = [i for i in range(len(state.model.trainable_variables)) if i not in head]
  batches = _batches(runner, config)
  frozen, stats = _weights_of(state.model, backbone), [
      v.numpy() for v in state.model.non_trainable_variables]
  first_head = _weights_of(state.model, head)
  runner.train_loop(batches, tf.constant(3))
  for before, after in zip(frozen, _weights_of(state.model, backbone)):
    np.testing.assert_array_equal(before, after)
  for before, after in zip(stats, state.model.non_trainable_variables):  # Inference mode.
    np.testing.assert_array_equal(before, after.numpy())
  assert not np.allclose(first_head[0], _weights_of(state.model, head)[0])
  runner.train_loop(batches, tf.constant(2))
  assert all(not np.array_equal(a, b) for a, b in
             zip(frozen, _weights_of(state.model, backbone)) if a.ndim == 4)


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_an_optimizer_of_frozen_variables_waits_with_its_schedule_going_on(
    strategy, make_config):
  # The kernels' Adam holds no head variable: it has nothing to apply while they are
  # frozen, and its step count (its schedule) goes on with the run's.
  config = make_config(freeze_epochs=0.5, train_steps=5,
                       param_rules="kernels(rank=4, optimizer='adam')").resolve(192, 4)
  state, runner = make_runner(config, distribute.make_strategy(strategy))
  kernels = [i for i, v in enumerate(state.model.trainable_variables)
             if len(v.shape) == 4]
  batches = _batches(runner, config)
  frozen = _weights_of(state.model, kernels)
  runner.train_loop(batches, tf.constant(3))
  for before, after in zip(frozen, _weights_of(state.model, kernels)):
    np.testing.assert_array_equal(before, after)
  runner.train_loop(batches, tf.constant(2))
  assert [int(o.iterations.numpy()) for o in state.optimizer.optimizers] == [5, 5]
  assert all(not np.array_equal(a, b) for a, b in
             zip(frozen, _weights_of(state.model, kernels)))

@pytest.mark.parametrize("freeze_epochs, accumulate, steps", [
    (0.5, 1, 3), (0.5, 2, 4),  # 6 steps an epoch: 3 steps, or 2 whole updates of 2.
    (0.01, 1, 1), (0.01, 4, 4),  # Shorter than a step, or an update: one update.
    (0.0, 2, 0),
])
def test_the_head_only_phase_is_whole_updates(freeze_epochs, accumulate, steps,
                                              make_config):
  config = make_config(freeze_epochs=freeze_epochs, grad_accum_steps=accumulate)
  assert config.resolve(192, 4).freeze_steps == steps

def test_the_head_phase_survives_a_kill_and_resume_bitwise(make_config, tmp_path, caplog):
  # The phase ends at step 3 (half of a 6-step epoch); the resumed run starts inside it.
  config = make_config(freeze_epochs=0.5, backbone_lr_scale=0.1, train_steps=6,
                       checkpoint_every=2, keep_checkpoints=3, deterministic=True)
  whole = loop.train(config.replace(model_dir=str(tmp_path / "whole")))
  # The same run stopped at step 2 (trained once): its later checkpoints, and the
  # model.keras it had not written yet, removed.
  shutil.copytree(tmp_path / "whole", config.model_dir)
  directory = os.path.join(config.model_dir, "checkpoints")
  for path in os.listdir(directory):
    if not path.startswith("ckpt-2."):
      os.remove(os.path.join(directory, path))
  os.remove(os.path.join(config.model_dir, "model.keras"))
  caplog.set_level(logging.INFO)
  resumed = loop.train(config)
  assert "resumed at step 2 from" in caplog.text
  assert resumed.final_eval["loss"] == whole.final_eval["loss"]
  for a, b in zip(keras.models.load_model(str(tmp_path / "whole" / "model.keras")).weights,
                  keras.models.load_model(os.path.join(config.model_dir, "model.keras")).weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_backbone_lr_scale_scales_the_backbone_update_exactly(optimizer, make_config):
  def one_step(scale):
    keras.utils.set_random_seed(0)
    config = make_config(optimizer=optimizer, backbone_lr_scale=scale).resolve(192, 4)
    state, runner = make_runner(config)
    batches = _batches(runner, config)
    before = [v.numpy() for v in state.model.trainable_variables]
    runner.train_loop(batches, tf.constant(1))
    return [v.numpy() - b for v, b in zip(state.model.trainable_variables, before)], runner
  plain, _ = one_step(1.0)
  scaled, runner = one_step(0.25)
  for i, (a, b) in enumerate(zip(plain, scaled)):
    expected = a if i in runner.spec.head else 0.25 * a
    np.testing.assert_allclose(b, expected, rtol=1e-4, atol=1e-7)


def test_weights_file_fills_the_backbone(make_config, tmp_path):
  config = make_config(model="mobilenet_v3_small(input_size=32)").resolve(192, 4)
  donor = backbones.application("mobilenet_v3_small", 32)
  path = str(tmp_path / "backbone.weights.h5")
  donor.save_weights(path)
  state, _ = make_runner(config.replace(weights=path))
  record = transfer.initialize(state.model, config.replace(weights=path), list("abcd"),
                               write=False)
  for ours, theirs in zip(state.model.get_layer("backbone").weights, donor.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  assert [e["variable"] for e in record["new"]] == ["logits/kernel", "logits/bias"]


@pytest.mark.parametrize("name", sorted(backbones.BACKBONES))
def test_imagenet_weights_make_the_backbone_keras_builds_for_them(name, monkeypatch, tmp_path):
  # The "download" is a file of random weights: keras.applications builds its network as
  # for ImageNet (EfficientNet adds a layer then) and loads it; the model's backbone,
  # filled through --weights=imagenet, must compute what that network computes.
  rng = np.random.default_rng(0)
  donor = backbones.application(name, 32)
  donor.set_weights([w * rng.uniform(0.5, 1.5, w.shape) if w.ndim == 1 else w
                     for w in donor.get_weights()])  # Statistics and offsets off their init.
  path = str(tmp_path / "notop.weights.h5")
  donor.save_weights(path)
  monkeypatch.setattr("keras.src.utils.file_utils.get_file", lambda *args, **kwargs: path)
  imagenet = backbones.application(name, 32, weights="imagenet")
  model = models.build(Config(model=f"{name}(input_size=32)", num_classes=3, image_size=32))
  transfer.load_weights(model, "imagenet", f"{name}(input_size=32)")
  x = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  if backbones.BACKBONES[name].preprocessing is not None:
    x = backbones.BACKBONES[name].preprocessing()(x)
  expected = imagenet(x, training=False).numpy()
  error = np.abs(model.get_layer("backbone")(x, training=False) - expected).max()
  assert np.abs(expected).max() > 0 and error <= 1e-3 * np.abs(expected).max(), (
      error / np.abs(expected).max())


def test_imagenet_weights_offline_is_one_line_naming_the_ways_out(make_config, monkeypatch):
  def offline(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- "
                    "[Errno -3] Temporary failure in name resolution")
  monkeypatch.setattr("keras.src.utils.file_utils.get_file", offline)
  config = make_config(model="mobilenet_v3_small(input_size=32)",
                       weights="imagenet").resolve(192, 4)
  state, _ = make_runner(config)
  with pytest.raises(ConfigError, match="--weights=PATH.*--init_from=RUN_DIR"):
    transfer.initialize(state.model, config, list("abcd"), write=False)


def test_imagenet_weights_for_a_model_without_them_is_refused_before_any_data(make_config):
  with pytest.raises(ConfigError, match="--model=resnet8 has no ImageNet weights"):
    make_config(weights="imagenet")  # Validation, as train.py's, before data.load.


@pytest.mark.parametrize("overrides, message", [
    (dict(weights="no/such/file.h5"), "not none, imagenet or a weights file"),
    (dict(init_from="no/such/run"), r"not a finished run \(no model.keras, no checkpoint\)"),
    (dict(init_from="no/such/run", init_weights="checkpoint"), "has no checkpoint to read"),
    (dict(init_weights="checkpoint"), "set --init_from=RUN_DIR too"),
    (dict(init_from="no/such/run", init_weights="raw"), "--init_weights='raw' is not one of"),
    (dict(freeze_epochs=-1.0), "must be >= 0"),
    (dict(backbone_lr_scale=0.0), "must be > 0"),
])
def test_bad_transfer_flags_are_refused(overrides, message, make_config):
  with pytest.raises(ConfigError, match=message):
    make_config(**overrides)


def test_freezing_a_model_without_a_head_is_refused(make_config):
  model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                            keras.layers.Dense(4, name="classifier")])
  config = make_config(freeze_epochs=1.0).resolve(192, 4)
  with pytest.raises(ConfigError, match="no layer named 'logits'"):
    steps.StepSpec.from_config(config, model, optim.variable_rules(config, model))


def test_weights_file_fills_a_model_without_a_backbone(make_config, tmp_path):
  config = make_config().resolve(192, 4)
  donor, _ = make_runner(config)
  path = str(tmp_path / "resnet8.weights.h5")
  donor.model.save_weights(path)
  state, _ = make_runner(config.replace(weights=path))
  record = transfer.initialize(state.model, config.replace(weights=path), list("abcd"),
                               write=False)
  assert record["new"] == [] and len(record["loaded"]) == len(state.model.weights)
  for ours, theirs in zip(state.model.weights, donor.model.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_weights_of_another_model_are_one_error_with_its_reason(make_config, tmp_path, recwarn):
  config = make_config(model="baseline_cnn", image_size=32).resolve(192, 4)
  donor, _ = make_runner(config)
  path = str(tmp_path / "baseline_cnn.weights.h5")
  donor.model.save_weights(path)
  state, _ = make_runner(config.replace(model="improved_cnn"))
  with pytest.raises(ConfigError, match="cannot load it into the model .*objects could not "
                                        "be loaded.*: Layer '.*' expected"):
    transfer.initialize(state.model, config.replace(model="improved_cnn", weights=path),
                        list("abcd"), write=False)
  assert not [w for w in recwarn if "could not be loaded" in str(w.message) or "Skipping"
              in str(w.message)]


def test_the_head_only_phase_moves_nothing_else_with_accumulation_and_decay(make_config):
  config = make_config(freeze_epochs=1.0, grad_accum_steps=2, weight_decay=0.1,
                       train_steps=4).resolve(192, 4)
  state, runner = make_runner(config)
  backbone = [i for i in range(len(state.model.trainable_variables))
              if i not in runner.spec.head]
  before = _weights_of(state.model, backbone)
  runner.train_loop(_batches(runner, config), tf.constant(4))  # Two updates, both frozen.
  for a, b in zip(before, _weights_of(state.model, backbone)):
    np.testing.assert_array_equal(a, b)
