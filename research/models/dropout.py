"""Dropout whose replicas draw their own masks: every model's Dropout."""

import keras
from keras import layers
import tensorflow as tf


@keras.saving.register_keras_serializable(package="research")
class ReplicaDropout(layers.Dropout):
  """Keras Dropout (same variables, same config) with the replica's id folded into the
  seed of its mask. Keras' draws each mask from the layer's one seed generator, whose
  state is mirrored, so under `mirrored` or `multi_worker` every replica drew the same
  masks for its share of the batch (one mask pattern repeated, not one per example).
  The generator's state is still one, advanced once a step and checkpointed, so a
  resumed run draws the masks it would have; on one replica the masks are Keras' own.
  """

  def call(self, inputs, training=False):
    replica = tf.distribute.get_replica_context()
    if not (training and self.rate > 0) or replica is None or replica.num_replicas_in_sync == 1:
      return super().call(inputs, training=training)
    seed = tf.random.experimental.stateless_fold_in(
        tf.cast(self.seed_generator.next(), tf.int64), replica.replica_id_in_sync_group)
    shape = tf.shape(inputs)
    if self.noise_shape is not None:  # Its None dimensions are the input's.
      shape = tf.stack([shape[i] if n is None else n for i, n in enumerate(self.noise_shape)])
    return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed, noise_shape=shape)
