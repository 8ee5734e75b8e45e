"""The airbench94 network (Keller Jordan, 2024) with its two initialization tricks.

A 2x2 patch-whitening first layer, three conv groups (conv -> pool -> BN -> GELU ->
conv -> BN -> GELU) of widths 64/256/256, a global max-pool and a bias-free linear
head scaled by 1/9. Each trick is separately switchable through its registered name:

  airbench             whitening + identity init (the recipe)
  airbench_wide        airbench95's widths, 128/384/384 (the long recipe)
  airbench_nowhiten    a learned 2x2 conv instead of data whitening
  airbench_noidentity  default initialization instead of partial identity
"""

import keras
from keras import layers, ops
import numpy as np

from research.models.batchnorm import FusedBatchNorm
from research.models.registry import MODELS, training_defaults, standardized_input
from research.registry import SpecError

WIDTHS = (64, 256, 256)
WIDE = (128, 384, 384)  # airbench95's: about 2.4x the FLOPs
# Running statistics keep 60% of their old value each step (PyTorch's momentum=0.4).
BN_MOMENTUM = 0.6


def torch_default_init():
  """Uniform in +-1/sqrt(fan_in): PyTorch's default for conv and linear weights,
  which airbench94's learning rate and weight decay were tuned with (He-uniform is
  sqrt(6) times wider)."""
  return keras.initializers.VarianceScaling(1.0 / 3, "fan_in", "uniform")


@keras.saving.register_keras_serializable(package="research")
class PartialIdentity(keras.initializers.Initializer):
  """PyTorch-default uniform, with the first `in_channels` filters set to the identity (Dirac).

  At init each conv group then passes its input through unchanged on half its
  channels, which lets the network train quickly from the first step.
  """

  def __call__(self, shape, dtype=None):
    kernel = torch_default_init()(shape, dtype="float32")
    kernel = np.array(kernel)
    height, width, cin, cout = shape
    for i in range(min(cin, cout)):
      kernel[:, :, :, i] = 0.0
      kernel[height // 2, width // 2, i, i] = 1.0
    return ops.cast(kernel, dtype or "float32")


@keras.saving.register_keras_serializable(package="research")
class Gelu(layers.Layer):
  """Exact GELU, computed in float32 and cast back to the compute dtype.

  Same function as `Activation("gelu")`; under mixed_bfloat16 on CPU the float32 erf
  made the whole airbench training step 15-20% faster than the bfloat16 one.
  """

  def call(self, inputs):
    return ops.cast(ops.gelu(ops.cast(inputs, "float32"), approximate=False), inputs.dtype)


@keras.saving.register_keras_serializable(package="research")
class PatchWhitening(layers.Conv2D):
  """A 2x2 valid conv whose fixed kernel whitens the training set's image patches.

  `init_from_data(inputs)` sets the kernel to the eigenvectors of the 2x2x3 patch
  covariance scaled by 1/sqrt(eigenvalue), and their negatives (2 * 12 filters).
  Only the bias trains.
  """

  def __init__(self, filters=24, eps=5e-4, **kwargs):
    kwargs.setdefault("kernel_size", 2)
    super().__init__(filters=filters, **kwargs)
    self.eps = eps

  def build(self, input_shape):
    super().build(input_shape)
    self.kernel.trainable = False

  def init_from_data(self, inputs):
    """`inputs`: float [N, H, W, C] of what this layer will see (normalized images)."""
    inputs = np.asarray(inputs, np.float64)
    k = self.kernel_size[0]
    n, h, w, c = inputs.shape
    patches = np.stack([inputs[:, i:h - k + 1 + i, j:w - k + 1 + j, :]
                        for i in range(k) for j in range(k)], axis=3)  # [N,H',W',k*k,C]
    patches = patches.reshape(-1, k * k * c)
    patches -= patches.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    filters = (eigenvectors / np.sqrt(eigenvalues + self.eps)).T  # [k*k*C, k*k*C]
    filters = np.concatenate([filters, -filters])[:self.filters]
    self.kernel.assign(filters.reshape(self.filters, k, k, c).transpose(1, 2, 3, 0))

  def get_config(self):
    config = super().get_config()
    config.update(eps=self.eps)
    config.pop("kernel_size", None)
    return config


def whitening_biases(model):
  """The biases of the model's PatchWhitening layers (the `whitening_bias` rule freezes them)."""
  return [layer.bias for layer in model.layers
          if isinstance(layer, PatchWhitening) and layer.use_bias]


def _conv_group(x, width, identity_init, bn_epsilon):
  init = PartialIdentity() if identity_init else torch_default_init()
  for i in range(2):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=init)(x)
    if i == 0:
      x = layers.MaxPooling2D()(x)
    # No learned scale: BatchNorm shifts only, as in airbench.
    x = FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=bn_epsilon, scale=False)(x)
    x = Gelu()(x)
  return x


def airbench(num_classes, image_size, whiten=True, identity_init=True, widths=WIDTHS,
             bn_epsilon=1e-5):
  inputs, x = standardized_input(image_size)
  if whiten:
    x = PatchWhitening(24, name="whiten")(x)
  else:
    x = layers.Conv2D(24, 2, kernel_initializer=torch_default_init(), name="stem")(x)
  x = Gelu()(x)
  for width in widths:
    x = _conv_group(x, width, identity_init, bn_epsilon)
  x = layers.GlobalMaxPooling2D()(x)
  x = layers.Dense(num_classes, use_bias=False, kernel_initializer=torch_default_init(),
                   dtype="float32", name="logits")(x)
  outputs = layers.Rescaling(1.0 / 9, dtype="float32", name="temperature")(x)
  return keras.Model(inputs, outputs, name="airbench")


@MODELS.register("airbench")
def _airbench(num_classes, image_size, bn_epsilon=1e-5):
  """airbench94's network, widths 64/256/256 (fast and Muon recipes); BatchNorm's epsilon.

  `bn_epsilon`: Keras' default here; airbench94_muon's is 1e-12."""
  if not bn_epsilon > 0:
    raise SpecError(f"airbench: bn_epsilon must be > 0, got {bn_epsilon}")
  return airbench(num_classes, image_size, bn_epsilon=bn_epsilon)


@MODELS.register("airbench_nowhiten")
def _nowhiten(num_classes, image_size):
  """airbench with a learned 2x2 conv instead of patch whitening (an ablation)."""
  return airbench(num_classes, image_size, whiten=False)


@MODELS.register("airbench_noidentity")
def _noidentity(num_classes, image_size):
  """airbench with default initialization instead of partial identity (an ablation)."""
  return airbench(num_classes, image_size, identity_init=False)


@MODELS.register("airbench_wide")
def _wide(num_classes, image_size):
  """airbench95's widths, 128/384/384: about 2.4x the FLOPs (the long recipe)."""
  return airbench(num_classes, image_size, widths=WIDE)


# The fast recipe (configs/cifar10_fast.flags names it): airbench94's tricks, each its
# own flag; docs/RECIPES.md measures them.
FAST_RECIPE = dict(
    batch_size=1024,
    epochs=10.0,
    # Nesterov SGD. The rate is for the MEAN loss over 1024 examples (airbench: 11.5 per
    # 1024 on the summed loss, divided by 1 + 1/(1 - momentum)).
    optimizer="sgd", nesterov=True, momentum=0.85, learning_rate=1.5,
    # Warmup from 0.2x over 23% of training, then linear decay to 0.07x (airbench94's).
    schedule="linear", warmup_epochs=2.3, warmup_from=0.2, decay_to=0.07,
    # Decoupled weight decay (multiplied by the rate): about airbench's L2 inside momentum.
    weight_decay=0.009,
    loss="cross_entropy(label_smoothing=0.2)",
    # Translate by up to 2 pixels; flip each image every other epoch.
    augment="crop(padding=2),alternating_flip",
    # Per-variable rules (first match wins): BatchNorm parameters learn 64x faster
    # (airbench's bias_scaler); the whitening layer's bias trains for the first 3 epochs.
    param_rules="batchnorm(lr_scale=64),whitening_bias(epochs=3)",
    # Lookahead: every 5 steps, pull a slow copy toward the weights and reset them to it
    # (decay 0.95^5 x (step/total)^3); the slow copy is evaluated and saved.
    lookahead_every=5,
    # Flip + 1-pixel-shift test-time augmentation (6 views) in the final evaluation; the
    # per-epoch ones see one view (6 views every epoch were about 15% of the time).
    tta="flip_translate", tta_final_only=True)
training_defaults("airbench", **FAST_RECIPE)
training_defaults("airbench_noidentity", **FAST_RECIPE)
# The long recipe (configs/cifar10_long.flags names it): airbench95's changes to the
# fast one, about 3.5x its compute. 15 epochs (the warmup still 23% of them); airbench95's
# 10.0 per 1024 summed examples (the fast recipe's 11.5 gives 1.5); the same weight decay
# per step (airbench decouples it from the rate): 0.009 x 1.5 / 1.3.
LONG_RECIPE = dict(FAST_RECIPE, epochs=15.0, warmup_epochs=3.45, learning_rate=1.3,
                   weight_decay=0.0104)
training_defaults("airbench_wide", **LONG_RECIPE)
training_defaults("airbench_nowhiten", **{**FAST_RECIPE, "param_rules": "batchnorm(lr_scale=64)"})
