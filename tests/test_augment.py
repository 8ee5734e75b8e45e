import numpy as np
import pytest
import tensorflow as tf

from research import augment, plugins
from research.ideas import mixup

plugins.load()  # The ideas' augmentations (mixup, cutmix) too.
NUM_CLASSES = 5


def _batch(n=8, size=16):
  rng = np.random.default_rng(0)
  label = tf.constant(rng.integers(0, NUM_CLASSES, n), tf.int32)
  return {"image": tf.constant(rng.uniform(0, 255, (n, size, size, 3)), tf.float32),
          "label": label, "target": tf.one_hot(label, NUM_CLASSES),
          "index": tf.range(n)}


def _seed(step):
  return tf.constant([7, step], tf.int64)


def _apply(spec, batch, step):
  """Runs augmentation `spec` for `step` (epoch = step) with the run seed 7."""
  ops, step_tensor = augment.pipeline(spec, 7), tf.constant(step, tf.int64)
  return ops(batch, _seed(step), ops.context(step_tensor, step_tensor, len(batch["label"])))


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_a_sharded_op_augments_each_share_as_it_would_the_whole_batch(name):
  """What lets each worker build only its own share of a global batch."""
  ops = augment.pipeline(name, 7)
  if not ops.sharded:
    pytest.skip(f"{name} mixes examples across the batch: every worker builds it whole")
  batch, step = _batch(12), tf.constant(3, tf.int64)
  whole = ops(batch, _seed(3), ops.context(step, step, 12))
  for offset, size in ((0, 4), (4, 4), (8, 4), (6, 6)):
    share = {k: v[offset:offset + size] for k, v in batch.items()}
    part = ops(share, _seed(3), ops.context(step, step, 12, offset, size))
    for key in whole:
      np.testing.assert_array_equal(part[key], whole[key][offset:offset + size])


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_deterministic_for_a_seed_and_different_across_steps(name):
  batch = _batch(64)  # Large enough that a 10% label noise changes some target.
  first, again = _apply(name, batch, 1), _apply(name, batch, 1)
  other = _apply(name, batch, 2)
  assert first["image"].shape == batch["image"].shape and first["image"].dtype == tf.float32
  assert first.keys() == batch.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  # An op may change images, targets or both (label_noise): compare the whole batch.
  differs = lambda x, y: any(not np.array_equal(x[k], y[k]) for k in x)
  assert differs(first, other)
  # mixup's Beta(0.2, 0.2) weight can round to exactly 1: that step is the identity.
  assert name == "mixup" or differs(first, batch)


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_same_inside_tf_data(name):
  batch = _batch()
  ds = tf.data.Dataset.from_tensors(batch).map(lambda b: _apply(name, b, 3))
  inside, eager = next(iter(ds)), _apply(name, batch, 3)
  for key in eager:
    np.testing.assert_allclose(inside[key], eager[key], atol=1e-4)


@pytest.mark.parametrize("name", ["mixup(alpha=0.4)", "cutmix", "mixup(alpha=1.0)",
                                  "cutmix(alpha=0.5)"])
def test_mixed_targets_are_distributions_and_reproducible(name):
  batch = _batch(32)
  out = _apply(name, batch, 5)
  target = out["target"].numpy()
  np.testing.assert_allclose(target.sum(-1), 1.0, rtol=1e-6)
  assert (target >= 0).all()
  assert not np.array_equal(target, batch["target"])  # Some pairs have other labels.
  np.testing.assert_array_equal(out["label"], batch["label"])  # Hard labels kept.
  np.testing.assert_array_equal(out["image"], _apply(name, batch, 5)["image"])


def test_mixup_mixes_images_and_targets_by_the_same_weight():
  batch = _batch(16)
  out = _apply("mixup(alpha=1.0)", batch, 1)
  op_seed = tf.random.experimental.stateless_fold_in(_seed(1), 0)  # First op's seed.
  lam = float(mixup.beta(tf.random.experimental.stateless_fold_in(op_seed, 0), 1.0))
  other = mixup.partners(tf.random.experimental.stateless_fold_in(op_seed, 1), 16).numpy()
  assert 0.0 < lam < 1.0 and sorted(other) == list(range(16))
  for key in ("image", "target"):
    x = batch[key].numpy()
    np.testing.assert_allclose(out[key], lam * x + (1 - lam) * x[other], rtol=1e-5, atol=1e-4)


def test_cutmix_target_weight_is_the_pasted_area():
  batch = _batch(16)
  out = _apply("cutmix(alpha=1.0)", batch, 2)
  changed = (out["image"].numpy() != batch["image"].numpy()).any(-1).mean(axis=(1, 2))
  own = np.sum(out["target"].numpy() * batch["target"].numpy(), -1)
  # Own class keeps 1 - pasted area (at least: the partner may share the class).
  assert np.all(own >= 1.0 - changed - 1e-5)
  assert changed.max() > 0


def test_flip_mirrors_or_keeps_each_image():
  batch = _batch(32)
  out = _apply("flip", batch, 0)["image"].numpy()
  images = batch["image"].numpy()
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  kept = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 4 < sum(flipped) < 28


def test_alternating_flip_flips_each_example_once_every_two_epochs():
  batch = _batch(64)
  images = batch["image"].numpy()
  flipped = np.array([[not np.array_equal(o, i) for o, i in zip(
      _apply("alternating_flip", batch, epoch)["image"].numpy(), images)]
                      for epoch in range(4)])
  assert 16 < flipped[0].sum() < 48
  np.testing.assert_array_equal(flipped[0] ^ flipped[1], True)
  np.testing.assert_array_equal(flipped[0], flipped[2])


def test_crop_is_a_translation_of_the_padded_image():
  batch = _batch(4)
  out = _apply("crop(padding=4)", batch, 0)["image"].numpy()
  padded = np.pad(batch["image"].numpy(), [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
  for o, p in zip(out, padded):
    assert any(np.array_equal(o, p[y:y + 16, x:x + 16]) for y in range(9) for x in range(9))
  np.testing.assert_array_equal(_apply("crop(padding=0)", batch, 0)["image"], batch["image"])


def test_cutout_greys_at_most_a_square():
  batch = _batch(16)
  images = batch["image"].numpy()
  out = _apply("cutout(size=8)", batch, 0)["image"].numpy()
  changed = (out != images).any(-1).sum(axis=(1, 2))
  assert (changed <= 64).all() and (changed > 0).all()
  assert np.all(out[out != images] == 127.5)


def test_pipeline_chains_in_order_and_empty_is_identity():
  batch = _batch()
  np.testing.assert_array_equal(_apply("", batch, 0)["image"], batch["image"])
  chained = _apply("crop(padding=2),flip", batch, 0)["image"]
  # The same as applying each op with its position folded into the step's seed.
  step = tf.constant(0, tf.int64)
  context = augment.Context(7, step, step, batch_size=8)
  by_hand = augment.AUGMENTATIONS.build("crop(padding=2)")(
      batch, tf.random.experimental.stateless_fold_in(_seed(0), 0), context)
  by_hand = augment.AUGMENTATIONS.build("flip")(
      by_hand, tf.random.experimental.stateless_fold_in(_seed(0), 1), context)
  np.testing.assert_array_equal(chained, by_hand["image"])


def test_registry_refuses_duplicates_and_lists_names():
  with pytest.raises(ValueError, match="already registered"):
    augment.AUGMENTATIONS.register("flip")(lambda: None)
  with pytest.raises(KeyError, match="known: alternating_flip, augmix, crop, cutmix, cutout, flip"):
    augment.AUGMENTATIONS.get("twirl")
