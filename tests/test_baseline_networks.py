"""The baseline networks papers compare against: wrn, resnet18 and vit (research/models/).

Their sizes are checked against the published parameter counts and multiply-adds at full
size (built, not trained); tiny versions train through the loop with their own recipes.
"""

import keras
import numpy as np
import pytest

from research import flops, loop, models, plugins
from research.config import Config, ConfigError


def trainable_parameters(model):
  """What PyTorch's `sum(p.numel() for p in model.parameters())` counts (no BN statistics)."""
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def vit_parameters(patch_size, dim, depth, mlp_ratio, image_size, num_classes):
  """A ViT's parameters counted by hand: patch embedding, class token and positions,
  each block's 2 LayerNorms, 4 attention projections and 2 MLP layers (all with biases),
  the final LayerNorm and the head."""
  tokens = (image_size // patch_size) ** 2 + 1
  hidden = mlp_ratio * dim
  block = 2 * 2 * dim + 4 * (dim * dim + dim) + (dim * hidden + hidden) + (hidden * dim + dim)
  return ((patch_size ** 2 * 3 * dim + dim) + dim + tokens * dim + depth * block + 2 * dim
          + (dim * num_classes + num_classes))


@pytest.mark.parametrize("model, parameters, macs", [
    # Zagoruyko & Komodakis (2016), Table 1: 2.7M and 36.5M; the counts of the authors' code.
    ("wrn", 2_748_890, None),
    # 5.25 GMACs as WRN-28-10 is usually listed (the sum per layer, counted by hand here,
    # is 5,243,328,768).
    ("wrn(depth=28, width=10)", 36_479_194, 5.25e9),
    # kuangliu/pytorch-cifar's ResNet18: 11,173,962 parameters, 0.56 GMACs.
    ("resnet18", 11_173_962, 0.56e9),
    ("vit", vit_parameters(4, 192, 9, 2, 32, 10), None),
    ("vit(patch_size=8, dim=96, depth=6, heads=3, mlp_ratio=4)",
     vit_parameters(8, 96, 6, 4, 32, 10), None),
])
def test_full_size_networks_have_the_published_size(model, parameters, macs):
  built = models.build(Config(model=model, num_classes=10, image_size=32))
  assert trainable_parameters(built) == parameters
  if macs:  # Conv2D and Dense only: the convnets' every multiply-add.
    assert flops.count_flops(built) / 2 == pytest.approx(macs, rel=0.01)


@pytest.mark.parametrize("model, expected", [
    ("wrn", dict(optimizer="sgd", learning_rate=0.1, nesterov=True, batch_size=128,
                 regularizers="l2(scale=2.5e-4)", weight_decay=0.0, epochs=200.0)),
    ("resnet18", dict(optimizer="sgd", learning_rate=0.1, nesterov=False, batch_size=128,
                      regularizers="l2(scale=2.5e-4)", schedule="cosine", epochs=200.0)),
    ("vit", dict(optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, warmup_epochs=10.0,
                 loss="cross_entropy(label_smoothing=0.1)", augment="crop,flip",
                 epochs=100.0)),
])
def test_the_model_alone_runs_its_published_recipe(model, expected):
  """`train.py --model=NAME` takes the recipe, and it validates: every item and the model
  built on tiny images."""
  config = Config(model=model, dataset="synthetic", image_size=16, num_classes=3)
  config = config.with_model_defaults(plugins.model_defaults(config), {"model"})
  assert {field: getattr(config, field) for field in expected} == expected
  plugins.validate(config.validate())


@pytest.mark.parametrize("model", [
    "wrn(depth=10, width=1, dropout=0.3)", "resnet18(width=4)",
    "vit(dim=32, depth=2, heads=2, dropout=0.1)"])
def test_a_tiny_one_trains_with_its_recipe(model, make_config):
  """Each with its own optimizer, loss and regularizer, at a constant rate (the recipes'
  warmups are longer than the run) on 8x8 images; the ViT's model.keras loads."""
  config = Config(model=model)
  recipe = config.with_model_defaults(plugins.model_defaults(config), {"model"})
  config = make_config(model=model, image_size=8, train_steps=12, log_every=4, eval_every=12,
                       checkpoint_every=12, optimizer=recipe.optimizer,
                       learning_rate=recipe.learning_rate, nesterov=recipe.nesterov,
                       weight_decay=recipe.weight_decay, regularizers=recipe.regularizers,
                       loss=recipe.loss, augment="", schedule="constant")
  history = loop.train(config).train_history
  first, last = history[0][1]["loss"], history[-1][1]["loss"]
  assert np.isfinite(last) and last < 0.8 * first, (first, last)
  if model.startswith("vit"):
    saved = keras.models.load_model(f"{config.model_dir}/model.keras")
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    rebuilt = models.build(config.replace(num_classes=saved.output_shape[-1]))
    rebuilt.set_weights(saved.get_weights())
    np.testing.assert_allclose(saved(images), rebuilt(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model, image_size, message", [
    ("vit", 30, "--model=vit cannot be built for --image_size=30: vit: image_size 30 is "
                "not a multiple of patch_size 4"),
    ("vit(dim=100, heads=3)", 32, "--model=vit(dim=100, heads=3): vit: dim 100 must be a "
                                  "multiple of heads 3"),
    ("wrn(depth=20)", 32, "--model=wrn(depth=20): wrn: depth must be 6n+4 with n >= 1 "
                          "(10, 16, 22, 28, 40), got 20"),
    ("wrn(width=0)", 32, "--model=wrn(width=0): wrn: width must be >= 1, got 0"),
])
def test_a_size_the_network_cannot_take_is_one_line(model, image_size, message):
  with pytest.raises(ConfigError) as error:
    models.build(Config(model=model, num_classes=10, image_size=image_size))
  assert str(error.value) == message


@pytest.mark.parametrize("model", ["wrn(width=1)", "resnet18(width=8)",
                                   "vit(patch_size=2, dim=32, heads=2)"])
def test_the_convnets_build_for_any_image_size_and_the_vit_for_multiples_of_its_patch(model):
  for image_size in (6, 10, 16):
    built = models.build(Config(model=model, num_classes=4, image_size=image_size))
    assert built(np.zeros((1, image_size, image_size, 3), np.float32)).shape == (1, 4)


def test_the_listing_shows_each_with_its_settings_and_recipe():
  text = plugins.listing("model")
  for line in ("  wrn(depth=16, width=4, dropout=0.0)  Zagoruyko & Komodakis' wide ResNet",
               "  resnet18(width=64, zero_init_residual=False)  ResNet-18 with a 3x3 stem",
               "  vit(patch_size=4, dim=192, depth=9, heads=12, mlp_ratio=2, dropout=0.0)  "
               "A ViT for small images"):
    assert line in text
  assert ("training defaults: --augment=crop,flip --batch_size=128 --epochs=100.0 "
          "--learning_rate=0.001 --loss=cross_entropy(label_smoothing=0.1)") in text
