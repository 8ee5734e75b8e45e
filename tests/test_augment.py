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


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_deterministic_for_a_seed_and_different_across_steps(name):
  op = augment.AUGMENTATIONS.get(name)
  images = _images()
  first, again = op(images, _seed(1), CONFIG), op(images, _seed(1), CONFIG)
  other = op(images, _seed(2), CONFIG)
  assert first.shape == images.shape and first.dtype == tf.float32
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert not np.array_equal(first, images)


@pytest.mark.parametrize("name", augment.AUGMENTATIONS.names())
def test_same_inside_tf_data(name):
  op = augment.AUGMENTATIONS.get(name)
  images = _images()
  ds = tf.data.Dataset.from_tensors(images).map(lambda x: op(x, _seed(3), CONFIG))
  np.testing.assert_allclose(next(iter(ds)), op(images, _seed(3), CONFIG), atol=1e-4)


def test_flip_mirrors_or_keeps_each_image():
  images = _images(32)
  out = augment.flip(images, _seed(0), CONFIG).numpy()
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy())]
  kept = [np.array_equal(o, i) for o, i in zip(out, images.numpy())]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 4 < sum(flipped) < 28


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
  with pytest.raises(KeyError, match="known: crop, cutout, flip"):
    augment.AUGMENTATIONS.get("twirl")
