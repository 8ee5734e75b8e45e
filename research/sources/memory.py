"""Images decoded into one uint8 array in memory: the fast path, for data that fits."""

import tensorflow as tf

from research.sources import Indexed


class Arrays(Indexed):
  """`images` uint8 [N, H, W, 3] and `labels` int32 [N]; the payload is the example id."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  @property
  def image_size(self):
    return self.images.shape[1]

  def read(self, payloads):
    return tf.gather(self.constant("_images", self.images), payloads)

  def subset(self, indices):
    return Arrays(self.images[indices], self.labels[indices])

  def head(self, count):
    return self.images[:count]
