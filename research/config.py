"""The run configuration: defaults, validation, step resolution, JSON.

Every knob of a run is a field here, so a test builds a run in one line
(`Config(dataset="synthetic", model="baseline_cnn", train_steps=5)`) and train.py
turns each field into a flag of the same name. Steps and epochs are resolved to
step counts once, in `resolve`; the loop only ever sees steps.
"""

import dataclasses
import json
import math
import os

from research import files, footprint
from research.registry import split_list

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker")
CLUSTER_RESOLVERS = ("tf_config", "slurm")
DATA_CACHE = ("auto", "memory", "none")
LOW_RES_MODES = ("resize", "crop")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
TTA = ("none", "flip", "flip_translate")
ON_NAN = ("skip", "rollback", "halt")

# TensorBoard extras on by default: their measured cost is under 3% of a CIFAR run
# (docs/TENSORBOARD.md); the profile stays opt-in.
DEFAULT_HOOKS = "train_images,predictions,histograms,hparams,model_summary"
# The loop's actions in order (research/hooks.py); `hooks` is where --hooks run.
DEFAULT_ACTIONS = "nan_policy,log,evaluate,hooks,checkpoint,save_model,useless_run"

# Fields of which a run sets one at most: a model's default for one of them is not taken
# when a flag sets another (research/models: training defaults).
EXCLUSIVE = (("ema_decay", "lookahead_every"), ("weights", "init_from"))
# A model's defaults for these were tuned with its own --optimizer.
OPTIMIZER_TUNED = ("learning_rate", "momentum", "nesterov", "weight_decay")

# Fields that shape the checkpoint: a model dir written with other values is refused.
CHECKPOINT_FIELDS = ("model", "num_classes", "image_size", "optimizer", "averaging",
                     "loss_scaling", "gradient_accumulation")


class ConfigError(ValueError):
  """A configuration that cannot run; the message says which value and why."""


def item_name(item):
  """A registry item's name without its parameters: resnet50(input_size=64) -> resnet50."""
  return item.split("(")[0].strip()


def reason(error):
  """An exception's message in one line, for an `error:` line that names the cause: its
  first non-blank line (with the next when that one ends in a colon, as Keras' and
  h5py's often do), or the exception's type when it has no message."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]


def _field(default, help_text):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Config:
  # Where and how to run.
  strategy: str = _field("default", "tf.distribute strategy: " + "|".join(STRATEGIES))
  cpu_devices: int = _field(0, "split the CPU into N logical devices (0: do not split)")
  cluster_resolver: str = _field("tf_config", "where --strategy=multi_worker finds the "
                                 "cluster: tf_config (the TF_CONFIG variable) or slurm (the "
                                 "Slurm job step's variables; one task per worker)")
  port_base: int = _field(8888, "with --cluster_resolver=slurm: the port of the first "
                          "task on each node (the next tasks take the next ports)")
  jit_compile: bool = _field(False, "compile the train step with XLA")
  precision: str = _field("auto", "|".join(PRECISIONS) + " (auto: mixed_bfloat16 where the "
                          "hardware computes bf16 natively, mixed_float16 on older GPUs, "
                          "else float32; config.json holds the resolved one)")
  deterministic: bool = _field(False, "turn on TensorFlow op determinism")
  seed: int = _field(0, "seed of initialization, shuffling and augmentation")
  model_dir: str = _field("", "checkpoints, TensorBoard and the final model "
                          "(default: runs/<model>_<dataset>)")
  allow_config_change: bool = _field(False, "resume a model dir trained with another "
                                     "config (the changes are logged, and every config "
                                     "is kept in its config_history.jsonl)")
  allow_data_change: bool = _field(False, "resume a model dir whose --data_dir folder "
                                   "gained or lost files since its run started (its "
                                   "validation split is drawn again: the resumed run may "
                                   "evaluate on images it trained on)")

  # Data.
  dataset: str = _field("cifar10", "the data: NAME or NAME(key=value, ...) of the dataset "
                        "registry (--list=dataset); tfds:NAME is a TensorFlow Datasets "
                        "dataset, prepared in --data_dir or TFDS's default dir")
  data_dir: str = _field("", "image folder for --dataset=folder (class subfolders), "
                         "record set for --dataset=tfrecord (scripts/make_tfrecords.py), "
                         "prepared TFDS data for --dataset=tfds:NAME")
  data_cache: str = _field("auto", "a folder's images: memory (decoded once, cached in "
                           "--cache_dir, held in memory), none (read from the files as "
                           "training goes, in bounded memory) or auto (memory when the "
                           "decoded images take at most a quarter of the available memory)")
  cache_dir: str = _field("", "where decoded folders are cached "
                          "(default: ~/.cache/research)")
  val_split: float = _field(0.1, "fraction of the training data held out for validation "
                            "(0: train on all of it and evaluate on the dataset's test "
                            "split, or on --eval_data_dir for a folder, or not at all)")
  eval_data_dir: str = _field("", "with --dataset=folder --val_split=0: a folder with the "
                              "same classes (or some of them) to evaluate on")
  image_size: int = _field(32, "images are resized to this square size")
  low_res_epochs: float = _field(0.0, "progressive resizing: train the first this many "
                                 "epochs on images downscaled to --low_res_size (fewer "
                                 "FLOPs while the model learns coarse features), then at "
                                 "--image_size; evaluation is always at --image_size")
  low_res_size: int = _field(0, "the image size of the --low_res_epochs (0: three "
                             "quarters of --image_size)")
  low_res_stages: int = _field(1, "the --low_res_epochs in this many equal stages, their "
                               "sizes rising evenly from --low_res_size toward --image_size "
                               "(2 stages from 16 at 32 px: 16, then 24)")
  low_res_mode: str = _field("resize", "how the --low_res_epochs' images are made from the "
                             "augmented ones: resize (downscaled whole) or crop (a random "
                             "crop at full scale, as the evaluation sees objects)")
  num_classes: int = _field(0, "set from the data; given only for synthetic data")
  synthetic_examples: int = _field(1024, "training examples of --dataset=synthetic")
  augment: str = _field("crop,flip", "comma-separated augmentations, in order, each "
                        "name or name(key=value, ...), e.g. crop(padding=2),mixup(alpha=0.2) "
                        "(empty: none; --list=augment shows them)")
  data_service: str = _field("", "a tf.data service dispatcher (grpc://HOST:PORT): its "
                             "workers make the training batches, each exactly the local one "
                             "but in the order they finish (not with --deterministic; "
                             "docs/SCALING.md)")
  skip_bad_images: bool = _field(False, "train and evaluate on the readable images of the "
                                 "folders and report the others (default: stop and name "
                                 "them)")

  # Model and optimization.
  model: str = _field("resnet20", "architecture name from the model registry")
  loss: str = _field("cross_entropy", "loss from the loss registry, e.g. "
                     "cross_entropy(label_smoothing=0.2)")
  step: str = _field("standard", "step kind from the step registry: standard, "
                     "sam(rho=0.05), ...")
  regularizers: str = _field("", "comma-separated weight regularizers added to the loss, "
                             "e.g. l2(scale=1e-4)")
  metrics: str = _field("", "comma-separated metrics beyond loss/accuracy/top5, e.g. "
                        "ece,per_class_accuracy")
  probes: str = _field("weight_norm,update_norm", "comma-separated values computed "
                       "inside the step after each update, averaged over the steps of each "
                       "--log_every, e.g. grad_norm, update_ratio (none: no probes)")
  optimizer: str = _field("sgd", "optimizer name from the optimizer registry")
  learning_rate: float = _field(0.1, "peak learning rate, for --batch_size examples")
  momentum: float = _field(0.9, "momentum of sgd, beta_1 of adam/adamw")
  nesterov: bool = _field(True, "Nesterov momentum for sgd")
  weight_decay: float = _field(5e-4, "decoupled weight decay (0: none); "
                               "BatchNorm and biases are excluded")
  param_rules: str = _field("", "per-variable settings, first match wins: optimizer, "
                            "lr_scale, weight_decay, epochs, grad, e.g. "
                            "kernels(rank=4,optimizer='muon'),batchnorm(lr_scale=64) "
                            "(--list=param_rules)")
  grad_transforms: str = _field("", "comma-separated gradient transforms, in order, on the "
                                "gradient of each update summed over replicas, e.g. "
                                "clip_norm(max=1.0); per variable: a rule's grad='...' "
                                "(--list=grad_transforms)")
  weights: str = _field("none", "initial weights at a fresh start: none, imagenet (the "
                        "keras.applications backbones; downloads) or PATH: a Keras weights "
                        "file of the backbone (of the whole model, for models without one)")
  init_from: str = _field("", "start from another run's saved model (its model dir): "
                          "variables matched by layer and shape, the head new when the "
                          "classes differ; <model_dir>/initialization.json lists them")
  init_weights: str = _field("model", "what --init_from reads of its run: model (its "
                             "model.keras) or checkpoint (its newest checkpoint's raw "
                             "weights: a run that was stopped), as the scripts' --weights")
  freeze_epochs: float = _field(0.0, "train only the head (the `logits` layer) this many "
                                "epochs, BatchNorm in inference mode, then everything")
  backbone_lr_scale: float = _field(1.0, "learning-rate multiplier of every variable but "
                                    "the head's (fine-tuning: e.g. 0.1)")
  ema_decay: float = _field(0.0, "keep an exponential moving average of the weights with "
                            "this decay, evaluate and save it (0: off)")
  lookahead_every: int = _field(0, "every N steps, move a slow copy of the weights toward "
                                "them and reset them to it; evaluate and save the slow "
                                "copy (0: off)")
  lookahead_decay: float = _field(0.95 ** 5, "decay of --lookahead_every's slow copy at "
                                  "the end of training (per sync, so it depends on N); "
                                  "it grows from 0 as (step / train_steps)^3")
  tta: str = _field("none", "test-time augmentation in evaluation: " + "|".join(TTA))
  tta_final_only: bool = _field(False, "use --tta only in the last evaluation; the others "
                                "see one view (flip_translate's 6 views cost 6x)")
  schedule: str = _field("cosine", "learning-rate schedule name")
  warmup_epochs: float = _field(0.0, "linear warmup, in epochs")
  warmup_from: float = _field(0.0, "fraction of the peak learning rate the warmup "
                              "starts at")
  decay_to: float = _field(0.0, "fraction of the peak learning rate the decay ends at")

  # Length and cadence (all steps after `resolve`).
  epochs: float = _field(30.0, "training length in epochs (ignored if --train_steps)")
  train_steps: int = _field(0, "training length in steps (0: use --epochs)")
  batch_size: int = _field(128, "GLOBAL batch size, split across replicas")
  grad_accum_steps: int = _field(1, "average the gradients of N steps before each "
                                 "update: N x --batch_size examples per update. Steps count "
                                 "batches (--epochs rounds up to whole updates; a --train_steps "
                                 "mid-update leaves the rest for a longer rerun); the "
                                 "schedule, EMA and Lookahead count updates")
  eval_batch_size: int = _field(0, "global eval batch size (0: --batch_size)")
  steps_per_loop: int = _field(50, "train steps per compiled call, at most")
  loop_seconds: float = _field(5.0, "once the step time is known, calls are cut to about "
                               "this long, so Ctrl-C, logs and the ETA answer on slow "
                               "machines (0: --steps_per_loop only)")
  eval_every: int = _field(0, "steps between evaluations (0: once per epoch, within "
                           "--eval_budget)")
  eval_budget: float = _field(0.1, "with --eval_every=0, the share of the run's wall time "
                              "that evaluations and their figures may take: an epoch's "
                              "evaluation waits while it would pass this share of the time "
                              "since training started; the last one always runs (0: every "
                              "epoch; off under multi_worker, where workers evaluate together)")
  log_every: int = _field(100, "steps between console and TensorBoard logs")
  progress_seconds: float = _field(30.0, "between logs, print the pace and ETA on the "
                                   "console this often, and once as soon as the pace is "
                                   "known (0: only every --log_every steps)")
  checkpoint_every: int = _field(0, "steps between checkpoints (0: once per epoch)")
  keep_checkpoints: int = _field(3, "checkpoints kept in the model dir")
  on_nan: str = _field("skip", "a step with non-finite loss, gradients or updated weights "
                       "is not applied; then: skip it, rollback to the last checkpoint "
                       "with reseeded data, or halt")
  nan_retries: int = _field(3, "rollbacks before --on_nan=rollback gives up")
  max_skipped_fraction: float = _field(0.1, "a run that skipped more than this share of "
                                       "its steps as non-finite ends with an error (its "
                                       "checkpoints and model kept; 1: never)")
  inject_nan_step: int = _field(0, "fault injection for testing --on_nan: make the loss "
                                "of this step (1-based) NaN (0: never)")
  hooks: str = _field(DEFAULT_HOOKS, "comma-separated hooks run at loop points (none: "
                      "no hooks), e.g. histograms(every=500),profile(start=10,stop=20)")
  actions: str = _field(DEFAULT_ACTIONS, "the loop's work between compiled calls, in "
                        "order, `hooks` standing for --hooks: replace or add an item "
                        "(docs/EXTENDING.md)")
  plugins: str = _field("", "comma-separated modules (names on PYTHONPATH or .py paths) "
                        "whose registrations join the registries")

  # Resolved by `resolve`, saved for scripts that read the run back.
  steps_per_epoch: int = _field(0, "set from the data")
  warmup_steps: int = _field(0, "set from --warmup_epochs")
  freeze_steps: int = _field(0, "set from --freeze_epochs")
  low_res_steps: int = _field(0, "set from --low_res_epochs")
  model_defaults: str = _field("", "the model's training defaults this run took: the "
                               "fields no flag set")

  # ---------------------------------------------------------------------------

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)

  @property
  def averaging(self):
    """The kind of weight averaging (it shapes the checkpoint): none, ema or lookahead."""
    return "lookahead" if self.lookahead_every else "ema" if self.ema_decay else "none"

  @property
  def loss_scaling(self):
    """mixed_float16 when the optimizer is wrapped in a LossScaleOptimizer (it shapes the
    checkpoint), else none; of a resolved --precision."""
    return "mixed_float16" if self.precision == "mixed_float16" else "none"

  @property
  def gradient_accumulation(self):
    """on when gradients are summed over steps (their sums are checkpointed), else none."""
    return "on" if self.grad_accum_steps > 1 else "none"

  @property
  def plugin_modules(self):
    return tuple(split_list(self.plugins))

  @property
  def global_eval_batch_size(self):
    return self.eval_batch_size or self.batch_size

  def with_model_defaults(self, defaults, explicit):
    """A copy taking `defaults` ({field: value}: the model's recommended training
    settings) for every field not in `explicit` (the flags the user set, on the command
    line or in a flagfile); `model_defaults` lists what it took, as flags."""
    # Not the fields the user set, nor those their flags exclude (Lookahead after --ema_decay),
    # nor --epochs when their --train_steps sets the length: it would be recorded, unused.
    kept = set(explicit).union(*(g for g in EXCLUSIVE if set(explicit) & set(g)))
    if "train_steps" in explicit and self.train_steps:
      kept.add("epochs")
    taken = {name: value for name, value in sorted(defaults.items()) if name not in kept}
    return self.replace(**taken, model_defaults=as_flags(taken))

  def untuned_model_defaults(self, defaults, explicit):
    """The model defaults (as flags) this run took that were tuned for another optimizer
    than its --optimizer: baseline_cnn's Adam rate of 1e-3 under --optimizer=sgd."""
    own = defaults.get("optimizer")
    if own is None or item_name(own) == item_name(self.optimizer):
      return []
    return [f"--{name}={defaults[name]}" for name in OPTIMIZER_TUNED
            if name in defaults and name not in explicit]

  def validate(self):
    """Raises ConfigError on the first core value that cannot run. Writes nothing.

    Registry items (--model, --augment, ...) are checked by research.plugins.validate,
    once the plugins are imported.
    """
    for check in (self._check_finite, self._check_choices, self._check_averaging,
                  self._check_counts, self._check_length, self._check_optimization,
                  self._validate_initialization, self._check_data):
      check()
    _safe_dir("model_dir", self.model_dir)
    return self

  def _check_finite(self):
    """inf and nan pass every range check: a float field must be finite first."""
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.type is float and not math.isfinite(value):
        raise ConfigError(f"--{field.name} must be a finite number, got {value}")

  def _check_choices(self):
    """Fields that take one of a few names."""
    _choice("strategy", self.strategy, STRATEGIES)
    _choice("cluster_resolver", self.cluster_resolver, CLUSTER_RESOLVERS)
    if not 1024 <= self.port_base <= 65535:
      raise ConfigError(f"--port_base must be in [1024, 65535], got {self.port_base}")
    _choice("data_cache", self.data_cache, DATA_CACHE)
    _choice("precision", self.precision, PRECISIONS)
    _choice("on_nan", self.on_nan, ON_NAN)
    _choice("low_res_mode", self.low_res_mode, LOW_RES_MODES)
    _choice("tta", self.tta, TTA)

  def _check_averaging(self):
    """At most one kind of weight averaging, with its decay in range."""
    if not 0.0 <= self.ema_decay < 1.0:
      raise ConfigError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")
    if self.lookahead_every < 0 or not 0.0 <= self.lookahead_decay <= 1.0:
      raise ConfigError("--lookahead_every must be >= 0 and --lookahead_decay in [0, 1]")
    if self.lookahead_every and self.ema_decay:
      raise ConfigError("--lookahead_every and --ema_decay are two kinds of weight "
                        "averaging: choose one")

  def _check_counts(self):
    """Counts, sizes and cadences with their lower bounds; fractions within [0, 1]."""
    for name, low in _AT_LEAST:
      _at_least(name, getattr(self, name), low)
    if self.low_res_epochs and not self.low_res_size < self.image_size:
      raise ConfigError(f"--low_res_size must be smaller than --image_size="
                        f"{self.image_size}, got {self.low_res_size}")
    if not 0.0 <= self.max_skipped_fraction <= 1.0:
      raise ConfigError(f"--max_skipped_fraction must be in [0, 1], got "
                        f"{self.max_skipped_fraction}")
    if not 0.0 <= self.eval_budget <= 1.0:
      raise ConfigError(f"--eval_budget must be in [0, 1], got {self.eval_budget}")
    if not 0.0 <= self.val_split < 1.0:
      raise ConfigError(f"--val_split must be in [0, 1), got {self.val_split}")

  def _check_length(self):
    """A run has a length, and its batches fit in memory."""
    if self.train_steps == 0 and not self.epochs > 0:
      raise ConfigError(f"--epochs must be > 0 when --train_steps=0, got {self.epochs}")
    too_large = footprint.batch_error(self)  # Before anything is built for such images.
    if too_large:
      raise ConfigError(too_large)

  def _check_optimization(self):
    """The learning rate, its schedule's shape, momentum and weight decay."""
    if not self.learning_rate > 0:
      raise ConfigError(f"--learning_rate must be > 0, got {self.learning_rate}")
    if min(self.weight_decay, self.warmup_epochs, self.freeze_epochs, self.low_res_epochs) < 0:
      raise ConfigError("--weight_decay, --warmup_epochs, --freeze_epochs and "
                        "--low_res_epochs must be >= 0")
    if not self.backbone_lr_scale > 0:
      raise ConfigError(f"--backbone_lr_scale must be > 0, got {self.backbone_lr_scale} "
                        "(to keep the backbone fixed all run: --freeze_epochs=--epochs)")
    for name in ("warmup_from", "decay_to"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ConfigError(f"--{name} must be in [0, 1], got {getattr(self, name)}")
    if not 0.0 <= self.momentum < 1.0:
      raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")

  def _check_data(self):
    """What the data's kind does not check itself (--dataset and its --data_dir are
    checked by the kind: research/sources)."""
    if self.data_service and self.deterministic:
      raise ConfigError("--data_service hands out batches in the order its workers finish "
                        "them, so a run with it is not deterministic: drop "
                        "--deterministic, or --data_service")
    if self.eval_data_dir and not os.path.isdir(self.eval_data_dir):
      raise ConfigError(f"--eval_data_dir {self.eval_data_dir!r} is not a directory")

  def _validate_initialization(self):
    """--weights, --init_from and --init_weights name one start that exists."""
    if self.weights not in ("none", "imagenet") and not os.path.isfile(self.weights):
      raise ConfigError(f"--weights={self.weights!r} is not none, imagenet or a weights file")
    _choice("init_weights", self.init_weights, ("model", "checkpoint"))
    if self.init_weights != "model" and not self.init_from:
      raise ConfigError(f"--init_weights={self.init_weights} says what --init_from reads: "
                        "set --init_from=RUN_DIR too")
    if self.init_from:
      if self.weights != "none":
        raise ConfigError("--weights and --init_from both set the initial weights: "
                          "choose one")
      self._validate_init_from_run()
      if os.path.abspath(self.init_from) == os.path.abspath(self.run_dir):
        raise ConfigError("--init_from is this run's own model dir; to continue a run, "
                          "rerun it without --init_from")

  def _validate_init_from_run(self):
    """--init_from names a run that has what --init_weights reads."""
    checkpoints = os.path.join(self.init_from, "checkpoints")
    has_checkpoint = os.path.isfile(os.path.join(checkpoints, "checkpoint"))
    if self.init_weights == "checkpoint" and not has_checkpoint:
      raise ConfigError(f"--init_from={self.init_from!r} has no checkpoint to read "
                        f"(--init_weights=checkpoint): no {checkpoints}/checkpoint")
    if self.init_weights == "model" and not os.path.isfile(
        os.path.join(self.init_from, "model.keras")):
      way = (", or pass --init_weights=checkpoint to start from its newest checkpoint"
             if has_checkpoint else "")
      raise ConfigError(f"--init_from={self.init_from!r} is not a finished run (no "
                        f"model.keras{'' if has_checkpoint else ', no checkpoint'}): finish "
                        f"it by rerunning its command{way}")

  def validate_replicas(self, num_replicas):
    """The global batches must split evenly over the replicas."""
    for name, size in (("batch_size", self.batch_size),
                       ("eval_batch_size", self.global_eval_batch_size)):
      if size % num_replicas:
        raise ConfigError(
            f"--{name}={size} does not split over {num_replicas} replicas; "
            f"use a multiple of {num_replicas}")

  def resolve(self, num_train_examples, num_classes):
    """Returns a copy with every length and cadence as a step count."""
    if num_train_examples < self.batch_size:
      raise ConfigError(
          f"--batch_size={self.batch_size} is larger than the {num_train_examples} "
          "training examples; lower it or add data")
    steps_per_epoch = num_train_examples // self.batch_size
    train_steps = self.train_steps
    if not train_steps:  # Whole updates: a run ends on an applied update.
      # Rounded first: 1.1 epochs of 90 steps are 99 steps, not 99.00000000000001 -> 100.
      updates = math.ceil(round(self.epochs * steps_per_epoch / self.grad_accum_steps, 6))
      train_steps = self.grad_accum_steps * max(1, updates)
    return self.replace(
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        train_steps=train_steps,
        warmup_steps=int(round(self.warmup_epochs * steps_per_epoch)),
        freeze_steps=self._phase_steps(self.freeze_epochs, steps_per_epoch),
        low_res_steps=self._phase_steps(self.low_res_epochs, steps_per_epoch),
        eval_every=self.eval_every or steps_per_epoch,
        # Workers must agree on every evaluation: their clocks would not.
        eval_budget=0.0 if self.eval_every or self.strategy == "multi_worker" else
        self.eval_budget,
        checkpoint_every=self.checkpoint_every or steps_per_epoch,
        model_dir=self.run_dir)

  def _phase_steps(self, epochs, steps_per_epoch):
    """The steps of a phase of `epochs` at the start of the run: at least one update,
    and whole ones, so that no update mixes two phases."""
    if not epochs:
      return 0
    steps = int(round(epochs * steps_per_epoch))
    return self.grad_accum_steps * max(1, math.ceil(steps / self.grad_accum_steps))

  @property
  def low_res_image_size(self):
    """--low_res_size, or its default."""
    return self.low_res_size or max(1, round(0.75 * self.image_size))

  @property
  def low_res_sizes(self):
    """The image size of each --low_res_stages, in order: from --low_res_size, rising
    evenly toward (and always below) --image_size."""
    low, stages = self.low_res_image_size, self.low_res_stages
    return [low + (self.image_size - low) * k // stages for k in range(stages)]

  def size_phases(self):
    """(end step, image size) of each phase of a resolved config, in order, each of
    another size than the last: the low-res stages (whole updates; one shorter than an
    update is dropped), then --image_size to the run's end."""
    phases, start = [], 0
    for k, size in enumerate(self.low_res_sizes if self.low_res_steps else []):
      end = min(self.low_res_steps, self._phase_steps(
          (k + 1) * self.low_res_epochs / self.low_res_stages, self.steps_per_epoch))
      if phases and phases[-1][1] == size:
        phases[-1] = (end, size)  # Stages of one size are one phase.
      elif end > start:
        phases.append((end, size))
      start = max(start, end)
    return phases + [(max(start, self.train_steps), self.image_size)]

  def _phase_at(self, step):
    phases = self.size_phases()
    return next((phase for phase in phases if step < phase[0]), phases[-1])

  def image_size_at(self, step):
    """The training images' size at `step` (0-based) of a resolved config: the low-res
    stages', then --image_size."""
    return self._phase_at(step)[1]

  def training_work(self, first, last):
    """The cost of steps [first, last) in steps at --image_size: a low-res step counts as
    its share of the pixels (about its share of a convnet's FLOPs)."""
    work, start = 0.0, 0
    for end, size in self.size_phases():
      work += max(0, min(last, end) - max(first, start)) * (size / self.image_size) ** 2
      start = end
    return work

  def phase_end(self, step):
    """The first step after `step` where the training input changes size (the run's
    end when none does): a train call or an input pipeline stops there."""
    return self._phase_at(step)[0]

  @property
  def run_dir(self):
    """--model_dir, or its default."""
    model = item_name(self.model)
    dataset = item_name(self.dataset).replace("tfds:", "tfds_").replace("/", "_")
    return self.model_dir or os.path.join("runs", f"{model}_{dataset}")

  # --- serialization ---------------------------------------------------------

  def to_dict(self):
    return dataclasses.asdict(self)

  def to_json(self):
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values):
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})

  @classmethod
  def load(cls, path):
    with open(path) as f:
      return cls.from_dict(json.load(f))

  def save(self, path):
    files.write_text(path, self.to_json() + "\n")

  def hparams(self):
    """The flat view logged to TensorBoard's HParams dashboard."""
    return {k: v for k, v in self.to_dict().items()
            if isinstance(v, (bool, int, float, str)) and k not in ("model_dir", "cache_dir")}

  def checkpoint_differences(self, other):
    """Fields that shape the checkpoint and differ between two resolved configs."""
    return [f"{name}: {getattr(other, name)!r} in the model dir, {getattr(self, name)!r} now"
            for name in CHECKPOINT_FIELDS if getattr(self, name) != getattr(other, name)]


def as_flags(settings):
  """{field: value} as flags, sorted: {"epochs": 20.0} -> "--epochs=20.0"."""
  return " ".join(f"--{name}={value}" for name, value in sorted(settings.items()))


def define_flags(flag_values, registered=None, model_set=()):
  """Defines a flag of the same name for every user-settable field in `flag_values`;
  `registered` ({flag: names}) adds the registered names to the help of those flags,
  and the help of those in `model_set` (set by some model's training defaults) says so."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  define = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
            float: flags.DEFINE_float, bool: flags.DEFINE_bool}
  for name, kind, default, help_text in fields():
    if registered and name in registered:
      help_text += f". Registered: {', '.join(registered[name])}"
    if name in model_set:
      help_text += ". Default: the --model's own where it sets one (--list=model)"
    define[kind](name, default, help_text, flag_values=flag_values)


# Paths a run records absolute: it resumes, and the scripts read its data, from any directory.
PATH_FIELDS = ("data_dir", "eval_data_dir")


def from_flags(flag_values):
  """The Config of parsed `flag_values` (defined by `define_flags`), its --plugins files
  and local data paths made absolute: scripts/evaluate.py imports a run's plugins, and a
  resume finds its data, from any directory."""
  config = Config(**{name: flag_values[name].value for name, *_ in fields()})
  return config.replace(plugins=",".join(
      local_path(p) if is_plugin_file(p) else p for p in config.plugin_modules),
                        **{name: local_path(getattr(config, name)) for name in PATH_FIELDS})


def local_path(path):
  """`path` absolute, `~` expanded; a URL (gs://...) or "" as it is."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def is_plugin_file(entry):
  """Whether a --plugins entry is a .py file's path (else a module name)."""
  return entry.endswith(".py") or os.sep in entry


def explicit_fields(flag_values):
  """The fields set on the command line or in a flagfile: the model's training defaults
  fill the others."""
  return {name for name, *_ in fields() if flag_values[name].present}


def read_flagfile(path):
  """(Config, the fields it sets) of a flagfile of configs/, as `train.py
  --flagfile=path` reads it before --model's training defaults fill the others
  (research.plugins.from_flagfile)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  define_flags(values)
  values(["flagfile", f"--flagfile={path}"])
  return from_flags(values), explicit_fields(values)


def fields():
  """(name, type, default, help) of every user-settable field, for flag definitions."""
  derived = {"steps_per_epoch", "warmup_steps", "freeze_steps", "low_res_steps",
             "model_defaults"}
  return [(f.name, f.type, f.default, f.metadata["help"])
          for f in dataclasses.fields(Config) if f.name not in derived]


# Fields with a lower bound: (name, smallest value).
_AT_LEAST = (("seed", 0), ("nan_retries", 0), ("inject_nan_step", 0), ("batch_size", 1),
             ("grad_accum_steps", 1), ("eval_batch_size", 0), ("steps_per_loop", 1),
             ("loop_seconds", 0), ("progress_seconds", 0), ("log_every", 1),
             ("eval_every", 0), ("checkpoint_every", 0), ("keep_checkpoints", 1),
             ("train_steps", 0), ("cpu_devices", 0), ("image_size", 8),
             ("low_res_size", 0), ("low_res_stages", 1),
             ("synthetic_examples", 1), ("num_classes", 0))


def _choice(name, value, choices):
  if value not in choices:
    raise ConfigError(f"--{name}={value!r} is not one of: {', '.join(choices)}")


def _at_least(name, value, low):
  if value < low:
    raise ConfigError(f"--{name} must be >= {low}, got {value}")


def _safe_dir(name, path):
  if path and ".." in os.path.normpath(path).split(os.sep):
    raise ConfigError(f"--{name}={path!r} escapes its parent directory ('..')")
