"""Kills, preemption, corrupt checkpoints, non-finite steps, messy folders, determinism."""

import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import keras
import tensorflow as tf
import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator

from research import checkpoints, data, distribute, hooks, loop, losses, state as state_lib
from research import steps
from tests.conftest import ROOT, make_runner, tiny_config

# 192 train examples / 24 = 8 steps an epoch; checkpoints every 3 steps.
RUN_FLAGS = ["--dataset=synthetic", "--synthetic_examples=256", "--val_split=0.25",
             "--image_size=16", "--model=resnet8", "--batch_size=24", "--train_steps=24",
             "--steps_per_loop=1", "--log_every=1", "--checkpoint_every=3",
             "--eval_every=8", "--precision=float32", "--deterministic",
             "--learning_rate=0.05", "--hooks=none"]


def start(model_dir, *extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, "train.py", f"--model_dir={model_dir}",
                           *RUN_FLAGS, *extra], cwd=ROOT, env=env, text=True,
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)


def run_until(model_dir, step, sig):
  """Runs train.py, sends `sig` once it has logged `step`; returns (exit code, whole log)."""
  proc = start(model_dir)
  log = []
  for line in proc.stderr:
    log.append(line)
    if f"step {step}/" in line:
      proc.send_signal(sig)
      break
  log.append(proc.stderr.read())
  return proc.wait(timeout=120), "".join(log)


def run_to_end(model_dir):
  proc = start(model_dir)
  log = proc.stderr.read()
  assert proc.wait(timeout=300) == 0, log[-3000:]
  return log


def weights(model_dir):
  return keras.models.load_model(os.path.join(model_dir, "model.keras")).get_weights()


def logged_steps(model_dir, tag="loss"):
  acc = event_accumulator.EventAccumulator(os.path.join(model_dir, "train"),
                                           size_guidance={"tensors": 0})
  acc.Reload()
  return [e.step for e in acc.Tensors(tag)]


def checkpointed_steps(model_dir):
  return sorted(int(p.rsplit("-", 1)[1][:-len(".index")])
                for p in glob.glob(f"{model_dir}/checkpoints/ckpt-*.index"))


def test_sigterm_then_sigkill_then_resume_is_bitwise_exact(tmp_path):
  """One run preempted (SIGTERM), resumed, killed (SIGKILL), resumed: the same weights
  as a run left alone, and every step logged once."""
  reference, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
  run_to_end(reference)

  status, log = run_until(stopped, 10, signal.SIGTERM)
  assert status == loop.PREEMPTED_EXIT_CODE, log[-3000:]
  stopped_at = int(re.search(r"signal 15 at step (\d+): checkpoint saved", log).group(1))
  # The step the message names was saved, though checkpoints fall every 3 steps.
  assert checkpointed_steps(stopped)[-1] == stopped_at >= 10

  # Just after the next regular checkpoint. Epoch boundaries and other steps:
  # tests/test_data.py, test_sources.py; a resume in the middle of an update:
  # test_steps.py.
  last_checkpoint = 3 * (stopped_at // 3 + 1)
  status, log = run_until(stopped, last_checkpoint + 1, signal.SIGKILL)
  assert status == -signal.SIGKILL, log[-3000:]
  assert f"resumed at step {stopped_at}" in log
  assert f"step {stopped_at + 1}/24" in log

  log = run_to_end(stopped)
  assert f"resumed at step {last_checkpoint}" in log
  for a, b in zip(weights(reference), weights(stopped)):
    np.testing.assert_array_equal(a, b)
  steps = logged_steps(stopped)
  assert steps == sorted(set(steps)) == list(range(1, 25))


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
  """A 6-step run checkpointed every 2 steps, trained once for the tests below."""
  config = tiny_config(tmp_path_factory.mktemp("six_steps"), train_steps=6,
                       checkpoint_every=2, keep_checkpoints=5)
  loop.train(config)
  return config


@pytest.fixture
def checkpointed_run(six_steps, tmp_path):
  """(config, checkpoint directory) of this test's own copy of `six_steps`, to damage."""
  config = six_steps.replace(model_dir=str(tmp_path / "run"))
  shutil.copytree(six_steps.model_dir, config.model_dir)
  return config, os.path.join(config.model_dir, "checkpoints")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(checkpointed_run, caplog):
  config, directory = checkpointed_run
  data_file = glob.glob(f"{directory}/ckpt-6.data-*")[0]
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  result = loop.train(config.replace(train_steps=8))
  assert result.train_history[0][0] == 6  # Resumed at 4: logs at 6 and 8.
  assert "ckpt-6 is unreadable" in caplog.text


def test_kill_during_save_leaves_the_previous_checkpoint(checkpointed_run):
  config, directory = checkpointed_run
  # What a kill mid-save leaves: a newer index and a torn data file, state not updated.
  with open(f"{directory}/ckpt-8.index", "wb") as f:
    f.write(b"\x00" * 10)
  with open(f"{directory}/ckpt-8.data-00000-of-00001", "wb") as f:
    f.write(b"torn")
  result = loop.train(config.replace(train_steps=9))
  assert [s for s, _ in result.train_history] == [9]  # Resumed at 6, not at 8 or 0.


def test_lost_state_file_still_resumes(checkpointed_run):
  config, directory = checkpointed_run
  os.remove(f"{directory}/checkpoint")
  result = loop.train(config.replace(train_steps=9))
  assert [s for s, _ in result.train_history] == [9]


def test_no_readable_checkpoint_stops_instead_of_restarting(checkpointed_run):
  config, directory = checkpointed_run
  for path in glob.glob(f"{directory}/ckpt-*.data-*"):
    with open(path, "wb") as f:
      f.write(b"garbage")
  # train.py turns CheckpointError into one `error:` line.
  with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint"):
    loop.train(config.replace(train_steps=9))


def test_a_checkpoint_without_the_random_state_resumes_saying_so(make_config, monkeypatch,
                                                                  caplog):
  # Checkpoints written before Dropout's generator states were saved lack "random".
  config = make_config(model="improved_cnn", train_steps=3, checkpoint_every=3)
  with monkeypatch.context() as patch:
    patch.setattr(state_lib.TrainState, "random_state", lambda self: [])
    loop.train(config)
  result = loop.train(config.replace(train_steps=6))
  assert result.step == 6
  assert "ckpt-3 predates saving the model's random generators" in caplog.text


def _all_checkpoints_finite(config):
  import tensorflow as tf
  for index in glob.glob(f"{config.model_dir}/checkpoints/ckpt-*.index"):
    reader = tf.train.load_checkpoint(index[:-len(".index")])
    for name in reader.get_variable_to_shape_map():
      value = reader.get_tensor(name)
      if np.issubdtype(np.asarray(value).dtype, np.floating):
        assert np.all(np.isfinite(value)), name
  return True


def test_the_first_log_after_a_resume_averages_the_same_steps(make_config, caplog):
  """The training metrics' sums since the last log are checkpointed: a run resumed
  between two logs logs what the run left alone logs. Other --metrics at the resume
  leave them out, saying so."""
  config = make_config(train_steps=4, log_every=4, checkpoint_every=2, deterministic=True,
                       schedule="constant", warmup_epochs=0)
  whole_dir = config.model_dir + "_whole"
  whole = loop.train(config.replace(model_dir=whole_dir)).train_history
  for resume_metrics in ("", "ece"):
    shutil.rmtree(config.model_dir, ignore_errors=True)
    shutil.copytree(whole_dir, config.model_dir)  # The same run, trained once.
    # Back to the checkpoint of step 2, between two logs, as if stopped there.
    directory = os.path.join(config.model_dir, "checkpoints")
    for path in glob.glob(f"{directory}/ckpt-4.*") + [f"{directory}/checkpoint"]:
      os.remove(path)
    resumed = loop.train(config.replace(metrics=resume_metrics)).train_history
    assert [s for s, _ in resumed] == [4]
    if resume_metrics == config.metrics:
      assert resumed == whole
  assert resumed[0][1]["loss"] != whole[0][1]["loss"]  # Steps 3-4 only.
  assert "predates saving the training metrics' sums since the last log (or --metrics " \
      "changed since)" in caplog.text


def test_on_nan_skip_skips_and_counts(make_config):
  # 1 of 6 steps: a run that still finishes, under --max_skipped_fraction=0.2.
  config = make_config(train_steps=6, checkpoint_every=2, inject_nan_step=4, on_nan="skip",
                       max_skipped_fraction=0.2)
  result = loop.train(config)
  assert result.step == 6
  assert all(np.isfinite(m["loss"]) for _, m in result.train_history)
  assert _all_checkpoints_finite(config)
  acc = event_accumulator.EventAccumulator(os.path.join(config.model_dir, "train"),
                                           size_guidance={"tensors": 0})
  acc.Reload()
  import tensorflow as tf
  assert [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("skipped_steps")] \
      == [0.0, 1.0]


def test_on_nan_halt_names_the_steps(make_config):
  config = make_config(train_steps=6, checkpoint_every=2, inject_nan_step=5, on_nan="halt",
                       steps_per_loop=3)
  with pytest.raises(loop.NonFiniteError, match=r"1 non-finite step\(s\) in steps 5..6; "
                     r"halting \(--on_nan=halt\). The newest checkpoint in \S+, of step 4, "
                     "holds only finite weights: rerun with --on_nan=rollback to resume "
                     "from it"):
    loop.train(config)
  assert _all_checkpoints_finite(config)


def test_on_nan_halt_before_any_checkpoint_says_there_is_none(make_config):
  config = make_config(train_steps=6, checkpoint_every=6, inject_nan_step=2, on_nan="halt",
                       steps_per_loop=1)
  with pytest.raises(loop.NonFiniteError, match=r"steps 2..2; halting \(--on_nan=halt\). "
                     r"No checkpoint has been saved yet \(--checkpoint_every=6\): a rerun "
                     "starts from scratch; try a lower --learning_rate"):
    loop.train(config)
  assert checkpointed_steps(config.model_dir) == []


def test_on_nan_rollback_restores_then_gives_up(make_config, caplog):
  # The injected NaN recurs at the same step, so every rollback meets it again.
  config = make_config(train_steps=6, checkpoint_every=2, inject_nan_step=5,
                       on_nan="rollback", nan_retries=2, steps_per_loop=1, log_every=1)
  with pytest.raises(loop.NonFiniteError, match="gave up after 2 rollbacks"):
    loop.train(config)
  assert caplog.text.count("rolled back to step 4") == 2
  assert _all_checkpoints_finite(config)


@hooks.HOOKS.register("test_nan_weights_once_at")
def _nan_weights_once_at(config, step=3):
  """Makes a kernel NaN after `step` the first time this process passes it: the next
  step is non-finite, and after a rollback the run goes on."""
  del config
  done = []

  def poison(ctx):
    if not done:
      done.append(step)
      kernel = ctx.state.model.trainable_variables[0]
      kernel.assign(tf.fill(kernel.shape, float("nan")))
  return hooks.Hook(at_steps=(step,), on_step=poison)


def test_a_run_resumed_after_a_rollback_reads_the_reseeded_data(make_config, caplog):
  config = make_config(train_steps=8, checkpoint_every=2, on_nan="rollback",
                       hooks="test_nan_weights_once_at(step=3)", steps_per_loop=1,
                       deterministic=True)
  loop.train(config)
  assert "rolled back to step 2, reseeding the data (try 1 of 3)" in caplog.text
  whole = weights(config.model_dir)
  # Back to the checkpoint of step 6, after the rollback, as if stopped there...
  directory = f"{config.model_dir}/checkpoints"
  for path in glob.glob(f"{directory}/ckpt-8.*") + [f"{directory}/checkpoint"]:
    os.remove(path)
  saved = tf.train.load_checkpoint(f"{directory}/ckpt-6")
  assert saved.get_tensor("rollbacks/.ATTRIBUTES/VARIABLE_VALUE") == 1
  caplog.clear()
  caplog.set_level(logging.INFO)
  loop.train(config)  # ...and the resumed steps 7-8 read the data of the rollback's seed.
  assert "resumed at step 6 from" in caplog.text
  for a, b in zip(weights(config.model_dir), whole):
    np.testing.assert_array_equal(a, b)

RECORDED = []  # (step, example ids) of test_record_batch.


@hooks.HOOKS.register("test_record_batch")
def _record_batch(config, step=4):
  """Records the batch ids that the hooks' `train_batch` says step `step` trains on."""
  del config
  from research import tensorboard_hooks  # pylint: disable=g-import-not-at-top
  return hooks.Hook(at_steps=(step,), on_step=lambda ctx: RECORDED.append(
      (ctx.step, tensorboard_hooks.train_batch(ctx)["index"].numpy())))


def test_after_a_rollback_hooks_see_the_reseeded_batches(make_config):
  """train_images and histograms show the batch the step trains on: after a rollback,
  one of the new seed's."""
  config = make_config(train_steps=5, checkpoint_every=2, on_nan="rollback", steps_per_loop=1,
                       hooks="test_nan_weights_once_at(step=3),test_record_batch(step=4)")
  RECORDED.clear()
  loop.train(config)
  split = data.load(config).train
  first = lambda seed: next(iter(data.train_dataset(
      split, config.replace(seed=seed, train_steps=5), 4, None)))["index"].numpy()
  assert [step for step, _ in RECORDED] == [4]
  np.testing.assert_array_equal(RECORDED[0][1], first(config.seed + 1000))
  assert not np.array_equal(RECORDED[0][1], first(config.seed))


def test_an_update_that_overflows_the_weights_is_not_applied(make_config):
  # The l1 gradient is 1e30 per weight: loss and gradients are finite, and every
  # sgd step would move the weights by 1e40, past float32's range.
  config = make_config(train_steps=4, checkpoint_every=2, regularizers="l1(scale=1e30)",
                       learning_rate=1e10, on_nan="skip", deterministic=True)
  with pytest.raises(loop.UselessRun, match="4 of its 4 steps") as failed:
    loop.train(config)  # Its checkpoints and model.keras are kept: inspected below.
  result = failed.value.result
  assert result.step == 4 and all(np.isfinite(m["loss"]) for _, m in result.train_history)
  assert _all_checkpoints_finite(config)
  skipped = tf.train.load_checkpoint(f"{config.model_dir}/checkpoints/ckpt-4")
  assert skipped.get_tensor("skipped/.ATTRIBUTES/VARIABLE_VALUE") == 4
  # Nothing was applied: the BatchNorm statistics are still their initial 0 and 1,
  # and the weights those of a run whose single step moved them by ~1e-30.
  model = keras.models.load_model(os.path.join(config.model_dir, "model.keras"))
  for variable in model.non_trainable_weights:
    initial = 0.0 if "mean" in variable.path else 1.0
    np.testing.assert_array_equal(variable.numpy(), initial, err_msg=variable.path)
  loop.train(config.replace(train_steps=1, learning_rate=1e-30, regularizers="",
                            model_dir=config.model_dir + "_untrained"))
  untrained = keras.models.load_model(f"{config.model_dir}_untrained/model.keras")
  for a, b in zip(model.trainable_weights, untrained.trainable_weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-20)


def test_rollback_before_the_first_checkpoint_restarts_from_the_initial_weights(
    make_config, caplog):
  config = make_config(train_steps=6, checkpoint_every=6, inject_nan_step=2,
                       on_nan="rollback", nan_retries=1, steps_per_loop=1, log_every=1)
  with pytest.raises(loop.NonFiniteError, match="gave up after 1 rollbacks"), \
      caplog.at_level(logging.INFO):
    loop.train(config)
  assert "rolled back to step 0 (the initial weights)" in caplog.text
  # The pace is measured from the restored step: step 1 again has an ETA.
  after = caplog.text.split("rolled back to step 0")[1]
  assert re.search(r"step 1/6 .* ETA \d+m\d\ds", after), after


def test_same_seed_same_weights_other_seed_other_weights(make_config):
  runs = {}
  for name, seed in (("a", 1), ("b", 1), ("c", 2)):
    config = make_config(seed=seed, deterministic=True,
                         model_dir=f"{make_config().model_dir}_{name}")
    loop.train(config)
    runs[name] = weights(config.model_dir)
  for a, b in zip(runs["a"], runs["b"]):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, c) for a, c in zip(runs["a"], runs["c"]))


def _messy_folder(root):
  rng = np.random.default_rng(0)
  for name in ("cat", "dog"):
    os.makedirs(root / name)
    for i in range(4):
      Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
          root / name / f"{i}.jpg")
  good = (root / "cat" / "0.jpg").read_bytes()
  (root / "cat" / "truncated.jpg").write_bytes(good[:len(good) // 3])
  (root / "cat" / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  Image.fromarray(rng.integers(0, 255, (9, 9, 4), dtype=np.uint8)).save(
      root / "dog" / "png_named.jpg", format="PNG")
  frames = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(3)]
  frames[0].save(root / "dog" / "animated.gif", save_all=True, append_images=frames[1:])
  Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "dog" / "grey.png")
  Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("CMYK").save(
      root / "dog" / "cmyk.jpg")
  (root / "dog" / "README.txt").write_text("stray")
  return root


def test_messy_folder_names_bad_files_or_skips_them(tmp_path, caplog):
  root = _messy_folder(tmp_path / "messy")
  with pytest.raises(data.DataError) as error:
    data.load_folder(str(root), 16, str(tmp_path / "cache"))
  message = str(error.value)
  assert "garbage.jpg" in message and "--skip_bad_images" in message
  split, names = data.load_folder(str(root), 16, str(tmp_path / "cache"),
                                  skip_bad_images=True)
  bad = message.split(":")[0]
  skipped = int(bad.split()[0])
  assert split.images.shape == (14 - skipped, 16, 16, 3)
  assert names == ["cat", "dog"]
  assert f"skipped {skipped} unreadable image file(s) of 14" in caplog.text


def test_empty_class_folder_is_refused(tmp_path):
  root = _messy_folder(tmp_path / "messy")
  os.makedirs(root / "emu")
  with pytest.raises(data.DataError, match="without images.*emu"):
    data.load_folder(str(root), 16, str(tmp_path / "cache"), skip_bad_images=True)


def test_a_non_finite_gradient_with_a_finite_loss_is_caught():
  all_finite = tf.function(lambda loss, grads: steps.finiteness(loss, grads)[1])  # As compiled.
  loss = tf.constant(1.0)
  finite = [tf.ones([3, 3]), tf.fill([2], 1e30), tf.fill([2], -1e30)]  # Large, finite.
  assert bool(all_finite(loss, finite))
  for bad in (float("nan"), float("inf"), -float("inf")):
    grads = finite + [tf.constant([0.0, bad])]
    assert not bool(all_finite(loss, grads)), bad
  assert not bool(all_finite(tf.constant(float("nan")), finite))
  # A gradient whose sum overflows float32 counts as non-finite: no usable update.
  assert not bool(all_finite(loss, [tf.fill([2], 3e38)]))


@losses.LOSSES.register("test_overflow_on_replica_1")
def _overflow_on_replica_1():
  """Cross-entropy, times 1e6 on the second replica only: its float16 gradients
  overflow at the initial loss scale, the first replica's do not."""
  cross_entropy = losses.cross_entropy()

  def loss(outputs, batch):
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return cross_entropy(outputs, batch) * tf.where(tf.equal(replica, 1), 1e6, 1.0)
  return loss


@losses.LOSSES.register("test_nan_gradient")
def _nan_gradient():
  """Cross-entropy plus sqrt(0 * logits): a finite loss whose gradient is always NaN."""
  cross_entropy = losses.cross_entropy()
  return lambda outputs, batch: (cross_entropy(outputs, batch) + tf.sqrt(
      0.0 * tf.reduce_sum(tf.abs(outputs["logits"]), axis=-1)))


def test_a_gradient_no_loss_scale_makes_finite_counts_as_skipped(make_config):
  # Halving the scale is the remedy for an overflow while the scale is above 1; below
  # that a non-finite gradient is a bad step, which --on_nan must see.
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    # Small batches of small images: float16 convolutions on a CPU are slow, and the
    # gradient is NaN whatever the batch.
    config = make_config(precision="mixed_float16", loss="test_nan_gradient", train_steps=18,
                         batch_size=8, image_size=8)
    split = data.load(config)
    config = config.resolve(len(split.train), len(split.class_names))
    state, runner = make_runner(config)
    batches = iter(runner.strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(split.train, config, 0, ctx)))
    assert state.loss_scale()["loss_scale"] == 2.0 ** 15
    runner.train_loop(batches, tf.constant(18))
    assert state.loss_scale()["loss_scale"] == 1.0  # 15 halvings, then no more:
    assert int(state.skipped.numpy()) == 3           # the 3 steps after them count.
  finally:
    keras.mixed_precision.set_global_policy("float32")

def test_an_overflow_on_one_replica_lowers_the_loss_scale(make_config):
  # Keras' LossScaleOptimizer looks at the first replica's gradients only: the step
  # checks every replica's and halves the scale itself, not counting a bad step.
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    config = make_config(precision="mixed_float16", loss="test_overflow_on_replica_1",
                         augment="", weight_decay=0.0, batch_size=8, image_size=8)
    split = data.load(config)
    config = config.resolve(len(split.train), len(split.class_names))
    strategy = distribute.make_strategy("mirrored")
    state, runner = make_runner(config, strategy)
    batches = iter(strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(split.train, config, 0, ctx)))
    start = state.model.get_weights()
    scale = state.loss_scale()["loss_scale"]
    runner.train_loop(batches, tf.constant(3))
    assert state.loss_scale()["loss_scale"] == scale / 8
    assert int(state.skipped.numpy()) == 0  # Not a non-finite step: --on_nan ignores it.
    assert int(state.optimizer.iterations.numpy()) == 0
    for before, after in zip(start, state.model.get_weights()):
      np.testing.assert_array_equal(before, after)
  finally:
    keras.mixed_precision.set_global_policy("float32")

def _small_filesystem(path, size_bytes):
  """Mounts a tmpfs of `size_bytes` at `path`; False where mounting is not allowed."""
  os.makedirs(path)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                         str(path)], capture_output=True).returncode == 0


def _fail_saves_after(monkeypatch, saves):
  """A filesystem double: checkpoint saves after the first `saves` fail as a full disk
  does, leaving a temporary directory behind."""
  real = tf.train.CheckpointManager.save
  count = []

  def save(self, checkpoint_number=None, **kwargs):
    count.append(checkpoint_number)
    if len(count) <= saves:
      return real(self, checkpoint_number=checkpoint_number, **kwargs)
    os.makedirs(os.path.join(self.directory, f"ckpt-{checkpoint_number}_temp"))
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
  monkeypatch.setattr(tf.train.CheckpointManager, "save", save)


@pytest.mark.parametrize("disk", ["tmpfs", "double"])
def test_a_full_disk_at_a_checkpoint_is_one_error_keeping_the_previous(disk, make_config,
                                                                        tmp_path,
                                                                        monkeypatch,
                                                                        caplog):
  config = make_config(train_steps=6, checkpoint_every=3, keep_checkpoints=1)
  if disk == "tmpfs":
    sized = config.replace(model_dir=str(tmp_path / "sized"))
    loop.train(sized)
    used = sum(os.path.getsize(p) for p in glob.glob(f"{sized.model_dir}/**", recursive=True)
               if os.path.isfile(p))
    # Room for the run's files and one checkpoint, not for the next beside it.
    checkpoint = sum(os.path.getsize(p) for p in
                     glob.glob(f"{sized.model_dir}/checkpoints/ckpt-6.*"))
    if not _small_filesystem(tmp_path / "disk", used - os.path.getsize(
        f"{sized.model_dir}/model.keras") + checkpoint // 2):
      pytest.skip("cannot mount a tmpfs here; the 'double' case covers the logic")
    config = config.replace(model_dir=str(tmp_path / "disk" / "run"))
  else:
    _fail_saves_after(monkeypatch, saves=1)
    monkeypatch.setattr(checkpoints, "free_bytes", lambda directory: 1000)
  try:
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"saving the checkpoint of step 6 in .* failed: .*"
                             r"ckpt-3 is kept: free some space and rerun"):
      loop.train(config)
    left = sorted(os.listdir(os.path.join(config.model_dir, "checkpoints")))
    assert not any("temp" in name or name.startswith("ckpt-6") for name in left), left
    assert "ckpt-3.index" in left
    if disk == "double":  # Said before training, from the checkpoint's size.
      assert "has 0.0 MB free; a checkpoint takes about" in caplog.text
  finally:
    if disk == "tmpfs":
      subprocess.run(["umount", str(tmp_path / "disk")])
