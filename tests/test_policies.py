"""research/policies.py: each image op against PIL's definition, and the four policies.

tests/test_augment.py runs every registered augmentation (these too) for determinism,
sharding and tf.data; here: what each op and policy computes, and its argument errors.
"""

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest
import tensorflow as tf

from research import augment, policies
from tests.test_cli import run

_RNG = np.random.default_rng(3)
# A noisy image and a smooth one (gradients: equalize and autocontrast see few values).
_ROWS, _COLS = np.mgrid[0:24, 0:20]
IMAGES = (_RNG.integers(0, 256, (24, 20, 3)).astype(np.uint8),
          np.stack([_COLS * 9 + 40, _ROWS * 7 + 20, (_COLS + _ROWS) * 4], -1).astype(np.uint8))


def _affine(matrix):
  return lambda image: image.transform(image.size, Image.AFFINE, matrix, Image.NEAREST,
                                       fillcolor=0)


# (op, magnitude, PIL's definition): torchvision applies each op through these calls.
PIL_OPS = [
    ("identity", 0.0, lambda image: image),
    ("shear_x", -0.27, _affine((1, -0.27, 0, 0, 1, 0))),
    ("shear_y", 0.27, _affine((1, 0, 0, 0.27, 1, 0))),
    ("translate_x", 5.7, _affine((1, 0, -5, 0, 1, 0))),  # int(5.7) pixels, as torchvision.
    ("translate_y", -5.7, _affine((1, 0, 0, 0, 1, 5))),
    ("rotate", 23.0, lambda image: image.rotate(23.0, Image.NEAREST, fillcolor=0)),
    ("brightness", 0.63, lambda image: ImageEnhance.Brightness(image).enhance(1.63)),
    ("color", -0.7, lambda image: ImageEnhance.Color(image).enhance(0.3)),
    ("contrast", 0.63, lambda image: ImageEnhance.Contrast(image).enhance(1.63)),
    ("sharpness", 0.63, lambda image: ImageEnhance.Sharpness(image).enhance(1.63)),
    ("posterize", 3.0, lambda image: ImageOps.posterize(image, 3)),
    ("solarize", 100.5, lambda image: ImageOps.solarize(image, 100.5)),
    ("autocontrast", 0.0, ImageOps.autocontrast),
    ("equalize", 0.0, ImageOps.equalize),
]


def _apply(images, names, magnitudes, interpolation="NEAREST"):
  return policies.apply(tf.constant(np.asarray(images), tf.float32),
                        [policies.OPS.index(n) for n in names], magnitudes,
                        interpolation).numpy()


def test_every_op_is_compared_with_pil():
  assert [name for name, *_ in PIL_OPS] == list(policies.OPS)


@pytest.mark.parametrize("name, magnitude, reference", PIL_OPS, ids=[p[0] for p in PIL_OPS])
def test_op_matches_pil(name, magnitude, reference):
  """Equal to PIL's uint8 result, pixel for pixel, on both images: the ops follow its
  arithmetic (fixed-point luma, truncating blends, its equalize table). Nearest rotation
  alone may pick the neighbouring source pixel where the sampling point falls within
  rounding of a pixel edge (PIL computes in 16.16 fixed point, TensorFlow in float32):
  at most 1% of the pixels (2 of 480 here)."""
  ours = _apply(IMAGES, [name] * 2, [magnitude] * 2)
  for image, out in zip(IMAGES, ours):
    expected = np.asarray(reference(Image.fromarray(image)), np.float32)
    differs = (out != expected).any(-1)
    assert differs.mean() <= (0.01 if name == "rotate" else 0.0), (name, differs.sum())


def test_ops_pick_per_example_and_augmix_bilinear_matches_pil_inside():
  """One call applies each example its own op; bilinear (AugMix's) agrees with PIL's to 1
  away from the border, where PIL clamps the neighbours and TensorFlow blends in the fill."""
  image = IMAGES[0]
  out = _apply([image] * 3, ["equalize", "rotate", "posterize"], [0.0, -90.0, 2.0])
  pil = Image.fromarray(image)
  np.testing.assert_array_equal(out[0], np.asarray(ImageOps.equalize(pil)))
  np.testing.assert_array_equal(out[1][2:-2], np.asarray(pil.rotate(-90.0, fillcolor=0))[2:-2])
  np.testing.assert_array_equal(out[2], np.asarray(ImageOps.posterize(pil, 2)))
  bilinear = _apply([image], ["rotate"], [23.0], "BILINEAR")[0]
  expected = np.asarray(pil.rotate(23.0, Image.BILINEAR, fillcolor=0), np.float32)
  assert np.abs(bilinear - expected)[3:-3, 3:-3].max() <= 1


def test_magnitude_ranges_are_torchvisions():
  names = lambda space: [row[0] for row in space]
  top = {name: values[-1] for name, values, _ in policies._spaces(31, 24, 20, wide=False)}
  assert names(policies._spaces(31, 24, 20, wide=False)) == list(policies.OPS)
  np.testing.assert_allclose([top[k] for k in ("shear_x", "translate_x", "translate_y",
                                                "rotate", "brightness", "posterize",
                                                "solarize")],
                             [0.3, 150 / 331 * 20, 150 / 331 * 24, 30, 0.9, 4, 0])
  wide = {name: values[-1] for name, values, _ in policies._spaces(31, 24, 20, wide=True)}
  np.testing.assert_allclose([wide[k] for k in ("shear_y", "translate_x", "rotate",
                                                 "sharpness", "posterize")],
                             [0.99, 32, 135, 0.99, 2])
  # RandAugment's default magnitude 9 of 31 bins: 9 of 30 steps of each range.
  bin9 = {name: values[9] for name, values, _ in policies._spaces(31, 24, 20, wide=False)}
  np.testing.assert_allclose([bin9["rotate"], bin9["shear_x"], bin9["posterize"]],
                             [9.0, 0.09, 7])


def _batch(n=8, size=16, seed=0):
  rng = np.random.default_rng(seed)
  label = tf.constant(rng.integers(0, 5, n), tf.int32)
  return {"image": tf.constant(rng.integers(0, 256, (n, size, size, 3)), tf.float32),
          "label": label, "target": tf.one_hot(label, 5), "index": tf.range(n)}


def _run(spec, batch, step, ops=None):
  ops = ops or augment.pipeline(spec, 7)
  step_tensor = tf.constant(step, tf.int64)
  return ops(batch, tf.constant([7, step], tf.int64),
             ops.context(step_tensor, step_tensor, len(batch["label"])))["image"].numpy()


def _candidates(images, wide, bins=None):
  """Every (op, bin, sign) of a policy's space applied to every image: [n, choices, ...]."""
  space = policies._spaces(31, images.shape[1], images.shape[2], wide=wide)
  choices = [(name, sign * values[b]) for name, values, signed in space
             for b in (range(31) if bins is None else bins) for sign in ((1, -1) if signed
                                                                          else (1,))]
  names, magnitudes = zip(*choices)
  tiled = np.repeat(images, len(choices), 0)
  out = _apply(tiled, names * len(images), magnitudes * len(images))
  return out.reshape(len(images), len(choices), *images.shape[1:])


@pytest.mark.parametrize("spec, wide, bins", [("randaugment(num_ops=1, magnitude=9)", False,
                                               (9,)),
                                              ("trivial_augment", True, None)])
def test_each_image_gets_one_op_of_the_policys_space(spec, wide, bins):
  batch = _batch(6, 12)
  out = _run(spec, batch, 4)
  candidates = _candidates(batch["image"].numpy(), wide, bins)
  for image, options in zip(out, candidates):
    assert any(np.array_equal(image, option) for option in options)
  assert len({tuple(image.ravel()) for image in out}) == 6


def test_randaugment_of_no_ops_is_the_identity_and_two_ops_compose():
  batch = _batch()
  np.testing.assert_array_equal(_run("randaugment(num_ops=0)", batch, 1), batch["image"])
  assert not np.array_equal(_run("randaugment(num_ops=2)", batch, 1),
                            _run("randaugment(num_ops=1)", batch, 1))


def test_policies_are_stateless_so_a_resumed_run_gets_the_same_batch():
  """Step 5 computed fresh (a resumed run) equals step 5 after steps 0-4 in one pipeline."""
  batch = _batch()
  for spec in ("randaugment", "trivial_augment", "augmix", "random_erasing"):
    ops = augment.pipeline(f"{spec},flip", 7)
    for step in range(5):
      _run(None, batch, step, ops)
    np.testing.assert_array_equal(_run(None, batch, 5, ops), _run(f"{spec},flip", batch, 5))


def test_augmix_mixes_the_image_with_its_chains():
  batch = _batch(16)
  images = batch["image"].numpy()
  out = _run("augmix", batch, 2)
  assert out.min() >= 0 and out.max() <= 255 and np.all(np.isfinite(out))
  assert not np.array_equal(out, np.round(out))  # Mixed by real-valued weights.
  assert np.all(np.abs(out - images).mean(axis=(1, 2, 3)) > 0)  # Every image changed.
  # The colour ops join the chains' choices only with all_ops.
  assert not np.array_equal(_run("augmix(all_ops=True)", batch, 2), out)


def test_random_erasing_erases_one_box_of_the_scale_and_ratio():
  batch = _batch(32, 32)
  images = batch["image"].numpy()
  out = _run("random_erasing(probability=1.0, value=0)", batch, 3)
  for image, erased in zip(images, out):
    changed = (image != erased).any(-1)
    rows, cols = np.nonzero(changed)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert np.all(erased[rows.min():rows.max() + 1, cols.min():cols.max() + 1] == 0)
    # round(sqrt(s r)) x round(sqrt(s / r)) pixels, s of scale: rounding moves the bounds.
    assert 0.5 * 0.02 * 1024 <= height * width <= 1.2 * 0.33 * 1024
    assert 0.3 / 2 <= height / width <= 3.3 * 2
  np.testing.assert_array_equal(_run("random_erasing(probability=0.0)", batch, 3), images)
  noisy = _run("random_erasing(probability=1.0)", batch, 3)
  box = noisy != images
  assert box.any() and 60 < noisy[box].mean() < 195  # Uniform random values in [0, 255].


@pytest.mark.parametrize("spec, message", [
    ("randaugment(num_ops=-1)", "randaugment: num_ops must be an integer >= 0, got -1"),
    ("randaugment(magnitude=31)", r"randaugment: magnitude must be in \[0, 30\] "
                                  r"\(of num_magnitude_bins=31\), got 31"),
    ("randaugment(magnitude=-1)", r"magnitude must be in \[0, 30\]"),
    ("randaugment(magnitude=11, num_magnitude_bins=11)", r"in \[0, 10\].*got 11"),
    ("trivial_augment(num_magnitude_bins=1)", "num_magnitude_bins must be >= 2, got 1"),
    ("augmix(severity=11)", r"augmix: severity must be in \[1, 10\], got 11"),
    ("augmix(width=0)", "augmix: width must be >= 1, got 0"),
    ("augmix(depth=0)", r"augmix: depth must be -1 \(1 to 3 at random\) or >= 1, got 0"),
    ("augmix(alpha=0.0)", "augmix: alpha must be > 0, got 0.0"),
    ("random_erasing(probability=1.5)", r"probability must be in \[0, 1\], got 1.5"),
    ("random_erasing(scale=(0.5, 0.1))", r"scale must be \(low, high\) with 0 < low <= high "
                                         r"<= 1, got \(0.5, 0.1\)"),
    ("random_erasing(ratio=(0.0, 1.0))", r"ratio must be \(low, high\) with 0 < low <= high"),
    ("random_erasing(value=300)", r"value must be None \(random\) or a number in "
                                  r"\[0, 255\], got 300"),
])
def test_arguments_are_checked(spec, message):
  with pytest.raises(ValueError, match=message):
    augment.AUGMENTATIONS.build(spec)


def test_the_cli_lists_the_policies_with_their_arguments():
  result = run("train.py", "--list=augment")
  assert result.returncode == 0, result.stderr[-2000:]
  for line in ("randaugment(num_ops=2, magnitude=9, num_magnitude_bins=31)  RandAugment "
               "(Cubuk et al., 2020)",
               "trivial_augment(num_magnitude_bins=31)  TrivialAugment Wide (Muller & Hutter",
               "augmix(severity=3, width=3, depth=-1, alpha=1.0, all_ops=False)  AugMix "
               "(Hendrycks et al., 2020)",
               "random_erasing(probability=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), "
               "value=None)  Random Erasing (Zhong et al., 2020)"):
    assert f"  {line}" in result.stdout
