import numpy as np
import pytest
import tensorflow as tf

from research import augment
from research.config import Config

CONFIG = Config(crop_padding=4, cutout_size=8)


def _images(n=8, size=16):
  return tf.constant(np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)),
                     tf.float32)


def _seed(step):
  return tf.constant([7, step], tf.int64)


def _apply(op, images, step):
  """Calls `op` for `step`; id-aware ops also get example ids and epoch = step."""
  if getattr(op, "uses_example_ids", False):
    return op(images, _seed(step), CONFIG, index=tf.range(images.shape[0]), epoch=step)
  return op(images, _seed(step), CONFIG)


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_deterministic_for_a_seed_and_different_across_steps(name):
  op = augment.AUGMENTATIONS.get(name)
  images = _images()
  first, again = _apply(op, images, 1), _apply(op, images, 1)
  other = _apply(op, images, 2)
  assert first.shape == images.shape and first.dtype == tf.float32
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert not np.array_equal(first, images)


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_same_inside_tf_data(name):
  op = augment.AUGMENTATIONS.get(name)
  images = _images()
  ds = tf.data.Dataset.from_tensors(images).map(lambda x: _apply(op, x, 3))
  np.testing.assert_allclose(next(iter(ds)), _apply(op, images, 3), atol=1e-4)


def test_flip_mirrors_or_keeps_each_image():
  images = _images(32)
  out = augment.flip(images, _seed(0), CONFIG).numpy()
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy())]
  kept = [np.array_equal(o, i) for o, i in zip(out, images.numpy())]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 4 < sum(flipped) < 28


def test_alternating_flip_flips_each_example_once_every_two_epochs():
  images = _images(64)
  flipped = []
  for epoch in range(4):
    out = augment.alternating_flip(images, _seed(epoch), CONFIG, index=tf.range(64),
                                   epoch=epoch).numpy()
    flipped.append([not np.array_equal(o, i) for o, i in zip(out, images.numpy())])
  flipped = np.array(flipped)
  assert 16 < flipped[0].sum() < 48
  np.testing.assert_array_equal(flipped[0] ^ flipped[1], True)
  np.testing.assert_array_equal(flipped[0], flipped[2])


def test_crop_is_a_translation_of_the_padded_image():
  images = _images(4)
  out = augment.crop(images, _seed(0), CONFIG).numpy()
  padded = np.pad(images.numpy(), [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
  for o, p in zip(out, padded):
    assert any(np.array_equal(o, p[y:y + 16, x:x + 16]) for y in range(9) for x in range(9))
  np.testing.assert_array_equal(
      augment.crop(images, _seed(0), CONFIG.replace(crop_padding=0)), images)


def test_cutout_greys_at_most_a_square():
  images = _images(16)
  out = augment.cutout(images, _seed(0), CONFIG).numpy()
  changed = (out != images.numpy()).any(-1).sum(axis=(1, 2))
  assert (changed <= 64).all() and (changed > 0).all()
  assert np.all(out[out != images.numpy()] == 127.5)


def test_pipeline_chains_in_order_and_empty_is_identity():
  images = _images()
  np.testing.assert_array_equal(augment.pipeline(CONFIG.replace(augment=""))(images, _seed(0)),
                                images)
  out = augment.pipeline(CONFIG.replace(augment="crop,flip"))(images, _seed(0))
  assert out.shape == images.shape


def test_registry_refuses_duplicates_and_lists_names():
  with pytest.raises(ValueError, match="already registered"):
    augment.AUGMENTATIONS.register("flip")(lambda x, s, c: x)
  with pytest.raises(KeyError, match="known: alternating_flip, crop, cutout, flip"):
    augment.AUGMENTATIONS.get("twirl")
