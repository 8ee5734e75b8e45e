"""Name -> callable registries: the way researchers plug in a new idea.

A new model, augmentation, optimizer, schedule or loss is one decorated function:

    @MODELS.register("my_net")
    def my_net(num_classes, image_size): ...
"""


class Registry:
  """A plain dict with a decorator that refuses duplicates and names the choices."""

  def __init__(self, kind):
    self.kind = kind
    self._entries = {}

  def register(self, name):
    def decorator(fn):
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is already registered")
      self._entries[name] = fn
      return fn
    return decorator

  def get(self, name):
    if name not in self._entries:
      raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
    return self._entries[name]

  def names(self):
    return sorted(self._entries)

  def __contains__(self, name):
    return name in self._entries
