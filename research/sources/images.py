"""Image files read and decoded in the pipeline, file by file: folders too large for
memory, or not worth decoding ahead (--data_cache=none)."""

import os

import numpy as np
import tensorflow as tf

from research.sources import DataError, Indexed

# Leading bytes of the formats tf.io.decode_image reads whose end is checked here
# (whatever else it reads is decoded to decide).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"RIFF")
_HEAD_BYTES = 34  # a BMP's header up to its compression field
_TAIL_BYTES = 64  # read at the end for the format's end (a JPEG may pad after its marker)


def decode_image(encoded, image_size):
  """One encoded JPEG/PNG/BMP/GIF/WebP (grey, RGBA, any size) -> uint8 RGB [S, S, 3], as
  training saw it (exported SavedModels decode their image bytes with this too)."""
  decode = lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image = tf.cond(tf.strings.substr(encoded, 0, 2) == b"BM", lambda: tf.cond(
      _is_palette_bmp(encoded), lambda: _palette_bmp(encoded), decode), decode)
  image.set_shape([None, None, 3])
  image = tf.image.resize(image, [image_size, image_size], antialias=True)
  return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)


def _header_number(encoded, start, length):
  """The little-endian unsigned number at bytes [start, start + length) of `encoded`."""
  raw = tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, start, length), tf.uint8), tf.int32)
  return tf.reduce_sum(raw * 256 ** tf.range(length))


def _is_palette_bmp(encoded):
  """Whether a BMP is an uncompressed 8-bit one, whose pixels are indices into its colour
  table (TensorFlow decodes the indices as grey levels): bits per pixel at byte 28 and
  compression at 30 of the headers of 40 bytes or more (size at byte 14) that every
  writer since Windows 3 makes."""
  return tf.reduce_all([_header_number(encoded, 14, 4) >= 40, _header_number(encoded, 28, 2) == 8,
                        _header_number(encoded, 30, 4) == 0])


def _palette_bmp(encoded):
  """An 8-bit BMP's indices looked up in its colour table: the table's entries (blue, green,
  red, 0) follow the header, whose size is at byte 14; its length, at byte 46, is 256 if 0."""
  indices = tf.cast(tf.io.decode_bmp(encoded, channels=0)[..., 0], tf.int32)
  colours = _header_number(encoded, 46, 4)
  colours = tf.where(colours == 0, 256, tf.minimum(colours, 256))
  table = tf.io.decode_raw(tf.strings.substr(encoded, 14 + _header_number(encoded, 14, 4),
                                             4 * colours), tf.uint8)
  rgb = tf.reverse(tf.reshape(table, [-1, 4])[:, :3], axis=[1])
  return tf.gather(rgb, tf.minimum(indices, tf.shape(rgb)[0] - 1))


def looks_readable(path):
  """Whether `decode_image` reads the file, decided from a few bytes where it can be:
  an image format's signature at the start and the format's end at the end. A file
  that does not end as its format does (a cut-off copy, or bytes after the image, as in
  a phone's motion photo) is decoded to decide, so a folder streamed from its files
  holds the files a decoded one does. Only damage in the middle passes; it is found
  when the file is read (research.sources.naming_bad_files)."""
  try:
    with open(path, "rb") as f:
      head = f.read(_HEAD_BYTES)
      size = os.fstat(f.fileno()).st_size
      f.seek(max(0, size - _TAIL_BYTES))
      tail = f.read()
  except OSError:
    return False
  if not head.startswith(SIGNATURES):  # Not an image, or another kind: as decoding says.
    return _decodes(path)
  number = lambda start, stop: int.from_bytes(head[start:stop], "little")
  ends = (b"\xff\xd9" in tail if head.startswith(SIGNATURES[0])
          else tail.endswith(b"IEND\xaeB`\x82") if head.startswith(SIGNATURES[1])
          # A BMP's size field; and only the 24- and 32-bit kinds TensorFlow always reads
          # (a 1-bit one fails to decode; an 8-bit one is decoded to decide).
          else number(2, 6) == size and number(28, 30) in (24, 32) and number(30, 34) in (0, 3)
          if head.startswith(b"BM")
          # A RIFF container of WebP, its size field counting all but 8 bytes.
          else head[8:12] == b"WEBP" and number(4, 8) + 8 == size if head.startswith(b"RIFF")
          else tail.endswith(b";"))  # GIF's trailer.
  return ends or _decodes(path)


def _decodes(path):
  try:
    tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return True
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
    return False


def decode_images(paths, image_size):
  """Decodes image files to uint8 RGB [N,S,S,3] with `decode_image`.

  Returns (images, ok): `ok[i]` is False where file i could not be decoded.
  """
  def decode(index, path):
    return index, decode_image(tf.io.read_file(path), image_size)

  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().batch(1024)
  images = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
  seen = np.zeros(len(paths), bool)
  for index, batch in ds.as_numpy_iterator():
    images[index] = batch
    seen[index] = True
  return images, seen


class Files(Indexed):
  """Image files, `paths` [N] with `labels` [N], decoded at `image_size` as they are
  read. The payload is the example id: the paths are held once, not in every epoch's
  order (ImageNet's 1.28M paths are about 100 MB a copy)."""

  def __init__(self, paths, labels, image_size):
    self.paths = np.asarray(paths, dtype=object)
    self.labels, self.image_size = labels, image_size

  def read(self, payloads):
    size = self.image_size
    return tf.map_fn(lambda path: decode_image(tf.io.read_file(path), size),
                     self._paths_of(payloads),
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8),
                     parallel_iterations=16)

  def encoded(self, payloads):
    return tf.map_fn(tf.io.read_file, self._paths_of(payloads),
                     fn_output_signature=tf.string)

  def subset(self, indices):
    return Files(self.paths[indices], self.labels[indices], self.image_size)

  def _paths_of(self, payloads):
    # From a list: a fixed-width numpy copy would give every path the longest one's room.
    return tf.gather(self.constant("_paths", self.paths.tolist()), payloads)

  def unreadable(self, error, payloads, during):
    """The DataError naming the files among `payloads()` that cannot be read or decoded,
    found by decoding each on its own (TensorFlow's `error` names none); None if all
    decode."""
    del error
    paths = self.paths[np.unique(payloads())].astype(str)
    bad = list(paths[~decode_images(paths, self.image_size)[1]])
    if not bad:
      return None
    listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return DataError(f"{len(bad)} image file(s) could not be read or decoded {during}: "
                     f"{listed}. Replace them with readable copies and rerun the same "
                     "command (a run resumes from its last checkpoint)")
