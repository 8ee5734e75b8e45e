import keras
import numpy as np
import pytest

from research import loop, models
from research.models import backbones
from research.config import Config, ConfigError
from research.registry import SpecError


@pytest.mark.parametrize("name", models.MODELS.names())
def test_builds_with_float32_logits_under_bf16(name):
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    # Backbones at a small input size: their resize and training are in test_transfer.
    small = {"input_size": 32} if name in backbones.BACKBONES else {}
    model = models.MODELS.get(name)(num_classes=7, image_size=32, **small)
    out = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  outputs = out if isinstance(out, dict) else {"logits": out}  # A dict must hold logits.
  assert outputs["logits"].shape == (2, 7)
  assert all(o.dtype == "float32" for o in outputs.values())


# resnet20 and resnet56 are resnet8's builder at other depths, airbench_wide airbench's
# at other widths, and airbench_noidentity and airbench_nowhiten airbench's without one
# of its layers (their builds are tested above); training them here would only take
# minutes. The ImageNet backbones train in test_transfer; wrn, resnet18 and vit, at their
# default sizes 40-120 s each here, train tiny in test_baseline_networks. For the same
# reason resnet_drop_path trains at resnet8's depth (its blocks are the same at 20).
@pytest.mark.parametrize("name", [n for n in models.MODELS.names()
                                  if n not in ("resnet20", "resnet56", "airbench_noidentity",
                                               "airbench_nowhiten", "airbench_wide", "wrn",
                                               "resnet18", "vit")
                                  and n not in backbones.BACKBONES])
def test_trains_with_falling_loss(name, make_config):
  spec = {"resnet_drop_path": "resnet_drop_path(depth=8)"}.get(name, name)
  config = make_config(model=spec, image_size=32, train_steps=16, log_every=4,
                       eval_every=16, optimizer="adam", learning_rate=2e-3,
                       weight_decay=0.0, augment="", precision="float32")
  history = loop.train(config).train_history
  first, last = history[0][1]["loss"], history[-1][1]["loss"]
  assert np.isfinite(last) and last < 0.8 * first, (first, last)


def test_unknown_model_lists_known():
  known = "airbench, airbench_noidentity, airbench_nowhiten, airbench_wide, baseline_cnn"
  with pytest.raises(SpecError, match=f"known: {known}"):
    models.build(Config(model="nope"))


def test_a_network_too_deep_for_the_image_size_is_one_line():
  with pytest.raises(ConfigError, match=r"--model=baseline_cnn cannot be built for "
                                        r"--image_size=16: Computed output size"):
    models.build(Config(model="baseline_cnn", image_size=16, num_classes=10))


def test_airbench_takes_its_batchnorm_epsilon_from_the_model_name():
  def epsilons(model):
    return {layer.epsilon for layer in models.build(Config(model=model, num_classes=10)).layers
            if isinstance(layer, keras.layers.BatchNormalization)}
  assert epsilons("airbench") == {1e-5}
  assert epsilons("airbench(bn_epsilon=1e-12)") == {1e-12}  # airbench94_muon's


def test_a_deep_resnet_starts_with_logits_of_a_shallow_ones_scale():
  # resnet56's residual branches end in a BatchNorm at scale 0 by default: 27 blocks deep,
  # its logits start as large as resnet8's, and 4.6x as large without it.
  images = np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
  def logits_std(model):
    keras.utils.set_random_seed(0)
    built = models.build(Config(model=model, num_classes=10))
    return float(np.std(built(images, training=True)))
  shallow = logits_std("resnet8")
  assert logits_std("resnet56") < 1.5 * shallow
  assert logits_std("resnet56(zero_init_residual=False)") > 3 * shallow


@pytest.mark.parametrize("model, reason", [
    ("airbench(bn_epsilon=0.0)", "airbench: bn_epsilon must be > 0, got 0.0"),
    ("mobilenet_v3_small(input_size=16)", "mobilenet_v3_small: input_size must be >= 32, got 16"),
])
def test_a_refused_model_setting_is_one_line_naming_the_setting(model, reason):
  with pytest.raises(ConfigError) as error:
    models.build(Config(model=model, num_classes=10))
  assert str(error.value) == f"--model={model}: {reason}"  # Not the image size's fault.


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (2, 3)])  # The fused op, and Keras' path.
def test_batchnorm_statistics_stay_the_same_on_every_replica(shape):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from research import distribute  # pylint: disable=g-import-not-at-top
  from research.models.batchnorm import FusedBatchNorm  # pylint: disable=g-import-not-at-top
  strategy = distribute.make_strategy("mirrored")
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    layer = FusedBatchNorm(momentum=0.0)
    layer.build((None, *shape[1:]))

  @tf.function
  def step():
    def on_replica():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      layer(tf.fill(shape, 4.0 * tf.cast(replica, tf.float32)), training=True)
    strategy.run(on_replica)

  step()
  # Replica 0 saw 0s and replica 1 saw 4s: both keep the mean, 2 (not 0 and 4).
  for mean in strategy.experimental_local_results(layer.moving_mean.value):
    np.testing.assert_allclose(mean.numpy(), 2.0)


def _dropout_masks(make_layer, strategy, save=None, restore=None, calls=2):
  """Each replica's dropout mask of the same all-ones input, `calls` times, and the generator's
  state after, as each replica holds it; the layer made under the strategy's scope, as
  the training state makes the model (its generator's state read from the checkpoint at
  `restore` first and written to `save` last, as the training state checkpoints it)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with strategy.scope():
    layer = make_layer(0.5, seed=1)

  @tf.function
  def masks():
    return strategy.run(lambda: layer(tf.ones([4, 16]), training=True) != 0)

  if restore:
    tf.train.Checkpoint(random=layer.variables).read(restore).assert_consumed()
  drawn = [[m.numpy() for m in strategy.experimental_local_results(masks())]
           for _ in range(calls)]
  states = [s.numpy() for s in strategy.experimental_local_results(
      layer.seed_generator.state.value)]
  if save:
    tf.train.Checkpoint(random=layer.variables).write(save)
  return drawn, states


def test_mirrored_replicas_draw_their_own_dropout_masks(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from research import distribute  # pylint: disable=g-import-not-at-top
  from research.models.dropout import ReplicaDropout  # pylint: disable=g-import-not-at-top
  mirrored = distribute.make_strategy("mirrored")
  assert mirrored.num_replicas_in_sync == 2
  drawn, states = _dropout_masks(ReplicaDropout, mirrored, save=str(tmp_path / "ckpt"))
  for first, second in drawn:
    assert not np.array_equal(first, second)  # Keras' Dropout: the same on both.
  assert not np.array_equal(drawn[0][0], drawn[1][0])  # A new mask every call.
  # One generator state, advanced alike on every replica (and checkpointed once).
  np.testing.assert_array_equal(states, [[1, 2], [1, 2]])
  # Resumed from its checkpoint, the replicas draw the masks they would have next.
  again, _ = _dropout_masks(ReplicaDropout, mirrored, restore=str(tmp_path / "ckpt"))
  four, _ = _dropout_masks(ReplicaDropout, mirrored, calls=4)
  np.testing.assert_array_equal(again, four[2:])
  # On one replica, Keras' masks exactly; saved and loaded as itself.
  default = tf.distribute.get_strategy()
  ours, _ = _dropout_masks(ReplicaDropout, default)
  keras_own, _ = _dropout_masks(keras.layers.Dropout, default)
  np.testing.assert_array_equal(ours, keras_own)
  model = models.build(Config(model="improved_cnn", num_classes=3, image_size=16))
  model.save(tmp_path / "model.keras")
  loaded = keras.models.load_model(tmp_path / "model.keras")
  assert sum(isinstance(l, ReplicaDropout) for l in loaded.layers) == 4
