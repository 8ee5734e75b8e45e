import json
import os

import keras
import pytest

from research import config as config_lib, data, loop, models, plugins
from research.config import Config, ConfigError
from tests.conftest import ROOT


def test_defaults_validate():
  plugins.validate(Config().validate())


def test_augmentations_as_large_as_the_images_validate():
  plugins.validate(Config(augment="crop(padding=31),cutout(size=32)").validate())


@pytest.mark.parametrize("changes, message", [
    (dict(strategy="tpu"), "--strategy='tpu' is not one of"),
    (dict(model="vgg99"), "--model: unknown model 'vgg99'; known: airbench"),
    (dict(augment="crop,twirl"), "--augment: unknown augmentation 'twirl'"),
    (dict(augment="crop(pad=2)"), "--augment: augmentation 'crop' has no parameter 'pad'; "
                                  "its parameters: padding"),
    (dict(augment="crop(padding='two')"), "crop(padding='two'): expected an int"),
    (dict(augment="crop(padding=-1)"), "--augment: crop: padding must be >= 0"),
    (dict(augment="crop(padding=two)"), "is not a Python literal"),
    (dict(augment="crop(padding=32)"), "--augment: crop(padding=32) needs images of at least "
                                       "33 pixels a side; --image_size is 32"),
    (dict(augment="flip,cutout(size=24)", image_size=16), "cutout(size=24) needs images"),
    (dict(step="sam(rho=0)"), "--step: sam: rho must be > 0"),
    # Optimizers' own checks, before any data is read.
    (dict(optimizer="lion(beta_2=5)"), "--optimizer: optimizer lion(beta_2=5): beta_2 must "
                                       "be in [0, 1)"),
    (dict(param_rules="kernels(optimizer='muon(ns_steps=0)')"),
     "--param_rules: optimizer muon(ns_steps=0): needs ns_steps >= 1"),
    (dict(metrics="ece(bins=1.5)"), "--metrics: metric ece(bins=1.5): expected an int"),
    (dict(metrics="ece(bins=0)"), "--metrics: ece: bins must be >= 1, got 0"),
    (dict(param_rules="pattern(regex='[')"), "--param_rules: pattern: regex='[' is not a "
                                               "regular expression"),
    (dict(hooks="profile(start=5,stop=2)"), "--hooks: profile: needs 0 <= start < stop"),
    (dict(plugins="no_such_module_xyz"), "--plugins: cannot import 'no_such_module_xyz'"),
    (dict(precision="float8"), "--precision"),
    (dict(learning_rate=float("inf")), "--learning_rate must be a finite number, got inf"),
    (dict(weight_decay=float("nan")), "--weight_decay must be a finite number, got nan"),
    (dict(lookahead_decay=float("-inf")), "--lookahead_decay must be a finite number"),
    (dict(val_split=1.0), "--val_split must be in [0, 1)"),
    (dict(batch_size=0), "--batch_size must be >= 1"),
    (dict(learning_rate=-1.0), "--learning_rate must be > 0"),
    (dict(loss="cross_entropy(label_smoothing=1.0)"), "--loss: cross_entropy: label_smoothing"),
    (dict(dataset="folder"), "--dataset: folder needs --data_dir=DIR (class subfolders)"),
    (dict(dataset="folder", data_dir="/no/such/dir"), "is not a directory"),
    (dict(dataset="folder", data_dir="/", eval_data_dir="/"),
     "--eval_data_dir is for --dataset=folder or tfrecord with --val_split=0"),
    (dict(model_dir="runs/../../etc"), "escapes its parent"),
    (dict(data_service="grpc://localhost:5050", deterministic=True),
     "--data_service hands out batches in the order its workers finish"),
    (dict(data_cache="disk"), "--data_cache='disk' is not one of: auto, memory, none"),
    (dict(dataset="tfds:"), "--dataset: tfds needs the dataset's name: --dataset=tfds:NAME"),
    (dict(strategy="multi_worker", cluster_resolver="k8s"), "--cluster_resolver='k8s'"),
    (dict(epochs=0.0), "--epochs must be > 0"),
    # What depends on the model's layers, from the model built before any data is read.
    (dict(model="baseline_cnn", image_size=16), "--model=baseline_cnn cannot be built for "
                                                "--image_size=16"),
    (dict(model="resnet8", param_rules="whitening_bias"),
     "--param_rules: whitening_bias matches no trainable variable of --model=resnet8"),
    (dict(model="resnet8", precision="mixed_float16",
          param_rules="kernels(rank=4, optimizer='adam')"),
     "--param_rules with several optimizers cannot run under mixed_float16"),
])
def test_bad_values_name_the_flag(changes, message):
  with pytest.raises(ConfigError, match=None) as error:
    plugins.validate(Config(**changes).validate())
  assert message in str(error.value)


def test_batch_must_split_over_replicas():
  Config(batch_size=64).validate_replicas(2)
  with pytest.raises(ConfigError, match="does not split over 3 replicas"):
    Config(batch_size=64).validate_replicas(3)
  with pytest.raises(ConfigError, match="eval_batch_size"):
    Config(batch_size=64, eval_batch_size=33).validate_replicas(2)


def test_resolve_turns_epochs_into_steps():
  config = Config(epochs=2.5, batch_size=100, warmup_epochs=1).resolve(1050, 10)
  assert config.steps_per_epoch == 10
  assert config.train_steps == 25
  assert config.warmup_steps == 10
  assert config.eval_every == config.checkpoint_every == 10
  assert config.num_classes == 10
  assert Config(train_steps=7).resolve(1000, 10).train_steps == 7
  assert Config(epochs=1.1, batch_size=10).resolve(900, 10).train_steps == 99


def test_epochs_round_up_to_whole_accumulated_updates():
  # 25 steps of batches at 2 per update: 13 updates, the last one whole and applied.
  config = Config(epochs=2.5, batch_size=100, grad_accum_steps=2).resolve(1050, 10)
  assert config.train_steps == 26
  # A --train_steps mid-update is kept: the rest waits in the checkpoint for a rerun.
  assert Config(train_steps=7, grad_accum_steps=2).resolve(1000, 10).train_steps == 7


def test_resolve_refuses_a_batch_larger_than_the_data():
  with pytest.raises(ConfigError, match="larger than the 50 training examples"):
    Config(batch_size=64).resolve(50, 10)


def test_json_round_trip(tmp_path):
  config = Config(model="baseline_cnn", learning_rate=0.01, augment="")
  path = str(tmp_path / "config.json")
  config.save(path)
  assert Config.load(path) == config
  assert json.load(open(path))["model"] == "baseline_cnn"


def test_checkpoint_differences_name_fields():
  a, b = Config(model="resnet20"), Config(model="resnet56", learning_rate=1.0)
  assert a.checkpoint_differences(b) == ["model: 'resnet56' in the model dir, 'resnet20' now"]


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_every_flagfile_of_configs_is_a_valid_config(name):
  config = plugins.from_flagfile(os.path.join(ROOT, "configs", name), dataset="synthetic")
  plugins.validate(config.validate())


def test_model_defaults_fill_only_what_no_flag_set():
  defaults = {"optimizer": "adam", "learning_rate": 1e-3, "lookahead_every": 5,
              "weights": "imagenet"}
  config = Config(learning_rate=0.5, ema_decay=0.9, init_from="runs/mine").with_model_defaults(
      defaults, explicit={"learning_rate", "ema_decay", "init_from"})
  assert (config.optimizer, config.learning_rate) == ("adam", 0.5)
  # Lookahead would clash with the user's EMA, ImageNet weights with their --init_from.
  assert config.lookahead_every == 0 and config.weights == "none"
  assert config.model_defaults == "--optimizer=adam"


def test_model_epochs_are_not_taken_when_train_steps_set_the_length():
  defaults = {"epochs": 50.0, "warmup_epochs": 2.0}
  config = Config(train_steps=20).with_model_defaults(defaults, explicit={"train_steps"})
  assert config.epochs == Config().epochs and config.warmup_epochs == 2.0
  assert config.model_defaults == "--warmup_epochs=2.0"
  # --train_steps=0 (in a flagfile, say) leaves the length to the epochs: the model's.
  config = Config(train_steps=0).with_model_defaults(defaults, explicit={"train_steps"})
  assert config.epochs == 50.0


def test_model_defaults_tuned_for_another_optimizer_are_named():
  defaults = {"optimizer": "adam", "learning_rate": 1e-3, "momentum": 0.9, "epochs": 20.0}
  def untuned(**flags):
    return Config(**flags).with_model_defaults(defaults, set(flags)).untuned_model_defaults(
        defaults, set(flags))
  assert untuned(optimizer="sgd") == ["--learning_rate=0.001", "--momentum=0.9"]
  assert untuned(optimizer="sgd", learning_rate=0.05) == ["--momentum=0.9"]
  assert untuned(optimizer="adam(epsilon=1e-7)") == untuned() == []


def test_every_model_default_is_valid():
  for name, defaults in models.TRAINING_DEFAULTS.items():
    config = Config(model=name, dataset="synthetic").with_model_defaults(defaults, set())
    plugins.validate(config.validate())


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_each_recipe_is_written_once(name):
  """A flagfile sets no field to the value its model's training defaults give it: the
  recipe is written there or in the flagfile (as changes to them), not both."""
  config, explicit = config_lib.read_flagfile(os.path.join(ROOT, "configs", name))
  defaults = models.defaults_of(config.model)
  assert [f for f in explicit & set(defaults) if getattr(config, f) == defaults[f]] == []


@pytest.mark.parametrize("name, model", [
    ("baseline_cnn", "baseline_cnn"), ("improved_cnn", "improved_cnn"),
    ("cifar10_fast", "airbench"), ("cifar10_long", "airbench_wide"),
    ("finetune_imagenet", "efficientnet_b0")])
def test_a_models_flagfile_runs_its_training_defaults(name, model):
  """The flagfile of a model's recipe runs what `--model=MODEL` runs, but for cadence."""
  recipe = plugins.from_flagfile(os.path.join(ROOT, "configs", f"{name}.flags"))
  defaults = models.defaults_of(model)
  assert recipe == Config(model=model).with_model_defaults(defaults, {"model"}).replace(
      steps_per_loop=recipe.steps_per_loop, log_every=recipe.log_every)
  assert {field: getattr(recipe, field) for field in defaults} == defaults


@pytest.mark.parametrize("error, expected", [
    (ValueError("first\nsecond"), "first"),
    (ValueError("\n  Layer 'conv' expected 2 variables:\n  received 0\n"),
     "Layer 'conv' expected 2 variables: received 0"),
    (KeyError(), "KeyError"),
    (OSError(""), "OSError"),
])
def test_reason_is_one_line_naming_the_cause(error, expected):
  assert config_lib.reason(error) == expected


def test_plugin_files_and_data_paths_are_kept_as_absolute_paths(tmp_path, monkeypatch):
  """config.json names them so that a resume and scripts/evaluate.py find them from
  anywhere; URLs stay as they are."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  values = flags.FlagValues()
  config_lib.define_flags(values)
  values(["train.py", "--plugins=ideas/mine.py,my_package.ideas", "--data_dir=../images",
          "--eval_data_dir=gs://bucket/test"])
  config = config_lib.from_flags(values)
  assert config.plugins == f"{tmp_path / 'ideas' / 'mine.py'},my_package.ideas"
  assert config.data_dir == str(tmp_path.parent / "images")
  assert config.eval_data_dir == "gs://bucket/test"


def test_what_needs_the_models_layers_is_refused_before_the_data(tmp_path, monkeypatch):
  def headless(num_classes, image_size):  # A plugin's model whose head is not `logits`.
    inputs = keras.Input((image_size, image_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="out")(pooled))
  monkeypatch.setitem(models.MODELS._entries, "headless_for_test", headless)  # pylint: disable=protected-access
  loaded = []
  monkeypatch.setattr(data, "load", lambda config: loaded.append(config))
  config = Config(dataset="synthetic", model="headless_for_test", freeze_epochs=1.0,
                  model_dir=str(tmp_path / "run")).validate()
  with pytest.raises(ConfigError, match="--freeze_epochs and --backbone_lr_scale need a "
                     "head: --model=headless_for_test has no layer named 'logits'"):
    loop.train(config)
  assert not loaded and not (tmp_path / "run").exists()


def test_validation_runs_once_per_config(monkeypatch):
  built = []
  build = models.build
  monkeypatch.setattr(models, "build", lambda config: built.append(config) or build(config))
  config = Config(dataset="synthetic", model="resnet8", image_size=16, seed=12345).validate()
  plugins.validate(config)
  plugins.validate(config)
  assert len(built) == 1
