"""A Vision Transformer (Dosovitskiy et al. 2021) sized for 32x32 images.

The image is cut into patch_size x patch_size patches, each linearly embedded (a strided
conv); a learned class token is prepended and learned position embeddings added; `depth`
pre-norm encoder blocks (LayerNorm -> multi-head self-attention, LayerNorm -> GELU MLP of
`mlp_ratio` x dim), each with a residual sum; a final LayerNorm, and the head reads the
class token. The default sizes are the ViT of Lee, Lee & Song, "Vision Transformer for
Small-Size Datasets" (2021; their code, aanna0701/SPT_LSA_ViT, models/create_model.py):
patch 4 (64 patches of a 32x32 image), dim 192, depth 9, 12 heads of 16, MLP ratio 2;
2.70M parameters with 10 classes.

  --model=vit
  --model="vit(depth=6, heads=3)"            smaller: 3 heads of 64, as ViT-Tiny's
"""

import keras
from keras import layers, ops

from research.models.dropout import ReplicaDropout
from research.models.registry import MODELS, logits, standardized_input, training_defaults
from research.registry import SpecError

LAYER_NORM_EPSILON = 1e-6  # The original ViT's.


@keras.saving.register_keras_serializable(package="research")
class ClassTokenAndPositions(layers.Layer):
  """Prepends a learned class token to the tokens [B, N, D] and adds a learned position
  embedding to each of the N + 1: the class token starts at 0 and the embeddings at
  N(0, 0.02), as in the original ViT."""

  def build(self, input_shape):
    tokens, dim = input_shape[1], input_shape[2]
    self.class_token = self.add_weight(shape=(1, 1, dim), initializer="zeros",
                                       name="class_token")
    self.position_embedding = self.add_weight(
        shape=(1, tokens + 1, dim), name="position_embedding",
        initializer=keras.initializers.TruncatedNormal(stddev=0.02))

  def call(self, tokens):
    token = ops.cast(self.class_token, tokens.dtype)
    token = ops.broadcast_to(token, (ops.shape(tokens)[0], 1, tokens.shape[-1]))
    return (ops.concatenate([token, tokens], axis=1)
            + ops.cast(self.position_embedding, tokens.dtype))


def _dropout(x, rate):
  return ReplicaDropout(rate)(x) if rate else x


def encoder_block(x, heads, mlp_ratio, dropout):
  """x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)); dropout on each branch's
  output and the MLP's hidden layer."""
  dim = x.shape[-1]
  y = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
  y = layers.MultiHeadAttention(heads, dim // heads)(y, y)
  x = layers.Add()([x, _dropout(y, dropout)])
  y = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
  y = _dropout(layers.Dense(dim * mlp_ratio, activation="gelu")(y), dropout)
  return layers.Add()([x, _dropout(layers.Dense(dim)(y), dropout)])


def vision_transformer(num_classes, image_size, patch_size, dim, depth, heads, mlp_ratio,
                       dropout):
  if image_size % patch_size:
    # A ValueError the registry reports as the image size's (patches would drop pixels).
    raise ValueError(f"vit: image_size {image_size} is not a multiple of patch_size "
                     f"{patch_size}")
  inputs, x = standardized_input(image_size)
  x = layers.Conv2D(dim, patch_size, strides=patch_size, name="patch_embedding")(x)
  x = layers.Reshape((-1, dim))(x)
  x = _dropout(ClassTokenAndPositions(name="tokens")(x), dropout)
  for _ in range(depth):
    x = encoder_block(x, heads, mlp_ratio, dropout)
  x = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON)(x)
  return keras.Model(inputs, logits(x[:, 0], num_classes), name="vit")


@MODELS.register("vit")
def vit(num_classes, image_size, patch_size=4, dim=192, depth=9, heads=12, mlp_ratio=2,
        dropout=0.0):
  """A ViT for small images, Lee et al.'s sizes (class token head): 2.7M parameters."""
  for name, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth),
                      ("heads", heads), ("mlp_ratio", mlp_ratio)):
    if value < 1:
      raise SpecError(f"vit: {name} must be >= 1, got {value}")
  if dim % heads:
    raise SpecError(f"vit: dim {dim} must be a multiple of heads {heads}")
  if not 0.0 <= dropout < 1.0:
    raise SpecError(f"vit: dropout must be in [0, 1), got {dropout}")
  return vision_transformer(num_classes, image_size, patch_size, dim, depth, heads,
                            mlp_ratio, dropout)


# Lee et al.'s training (main.py's defaults): AdamW at 1e-3 with weight decay 0.05, batch
# 128, 100 epochs, 10 of linear warmup, then cosine decay, label smoothing 0.1. Their
# recipe adds AutoAugment, CutMix and Mixup, random erasing (p=0.25), repeated
# augmentation (x3) and stochastic depth 0.1, left out here: crop+flip only. Published
# ViT-on-CIFAR recipes all add such a policy (AutoAugment or RandAugment) and mixing
# (mixup and cutmix are --augment items of research/ideas/); without them a ViT this size
# overfits CIFAR-10 well below a ResNet's accuracy. Keras' AdamW decays as PyTorch's
# (lr x decay x w per step), but here not the biases and LayerNorm parameters.
training_defaults("vit", optimizer="adamw", learning_rate=1e-3, momentum=0.9,
                  weight_decay=0.05, schedule="cosine", warmup_epochs=10.0, batch_size=128,
                  loss="cross_entropy(label_smoothing=0.1)", augment="crop,flip",
                  epochs=100.0)
