"""Typed configuration tree for training, evaluation and inference.

Every key a YAML file or a `-o key=value` override may set is a dataclass field below, with its
documentation in `doc(...)`. Loading rejects unknown keys and invalid values before any work
starts, and every error names the dotted key to change.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config file or override that names an unknown key or contains an invalid value."""


def doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """Declare a config field with its documentation."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class ModelConfig:
    output_size: int = doc("Generator output resolution in pixels (1024 for the FFHQ config-f StyleGAN2).", 1024)
    style_dim: int = doc("Width of W and of every style vector.", 512)
    n_mlp: int = doc("Number of mapping-network layers.", 8)
    channel_multiplier: int = doc("StyleGAN2 channel multiplier (2 for config-f).", 2)
    generator_channels: Optional[dict] = doc(
        "Channels per generator resolution, e.g. {4: 32, 8: 32}; null uses the official table.", None
    )
    encoder_num_layers: int = doc("Depth of the IR-SE body of both pSp encoders (50, 100 or 152).", 50)
    encoder_widths: list = doc(
        "Channels of the four IR-SE stages of both pSp encoders.", factory=lambda: [64, 128, 256, 512]
    )
    pool_size: int = doc("Side of the face pool that resizes generator outputs for the losses, in pixels.", 256)
    start_from_latent_avg: bool = doc("Add latent_avg to the age encoder's codes (official option).", False)
    start_from_encoded_w_plus: bool = doc(
        "Add the frozen pSp encoder's W+ (plus latent_avg) to the age encoder's codes, as SAM trains.", True
    )
    pretrained_encoder_bn_train: bool = doc(
        "Run the frozen pSp encoder's BatchNorm layers in train mode during training, so their running"
        " statistics drift as in the official code. false keeps them in eval mode.",
        True,
    )
    id_net_widths: list = doc(
        "Stage widths of the IR-SE50 identity network; [64, 128, 256, 512] for the released weights.",
        factory=lambda: [64, 128, 256, 512],
    )
    id_embedding_size: int = doc("Embedding size of the IR-SE50 identity network.", 512)
    dex_conv_widths: list = doc(
        "Conv widths of the five DEX VGG stages; [64, 128, 256, 512, 512] for the released weights.",
        factory=lambda: [64, 128, 256, 512, 512],
    )
    dex_fc_width: int = doc("Width of the DEX VGG fc6 and fc7 layers.", 4096)


@dataclass
class WeightsConfig:
    sam: Optional[str] = doc(
        "Converted SAM checkpoint (checkpoints/convert.py) whose age encoder, pSp encoder, generator and"
        " latent_avg start training or serve inference. Overrides stylegan and psp_encoder.",
        None,
    )
    stylegan: Optional[str] = doc("Converted StyleGAN2 generator (stylegan2-ffhq-config-f.pt).", None)
    psp_encoder: Optional[str] = doc("Converted pSp FFHQ encoder (psp_ffhq_encode.pt).", None)
    irse50: Optional[str] = doc(
        "Converted IR-SE50 ArcFace (model_ir_se50.pth): initialises the age encoder and serves the ID loss.", None
    )
    dex: Optional[str] = doc("Converted DEX VGG age classifier (dex_age_classifier.pth).", None)
    lpips: Optional[str] = doc("Converted LPIPS AlexNet with its linear heads.", None)
    curricularface: Optional[str] = doc("Converted CurricularFace IR-101 (evaluation ID similarity).", None)
    mtcnn: Optional[str] = doc("Converted MTCNN weights (evaluation face alignment).", None)


@dataclass
class LossConfig:
    l2_lambda: float = doc("Weight of the whole-image L2 loss when the target age is the input age.", 0.25)
    l2_lambda_aging: float = doc("Weight of the whole-image L2 loss when aging.", 0.25)
    l2_lambda_crop: float = doc("Weight of the L2 loss on the face crop [35:223, 32:220].", 1.0)
    lpips_lambda: float = doc("Weight of the whole-image LPIPS loss when the target age is the input age.", 0.1)
    lpips_lambda_aging: float = doc("Weight of the whole-image LPIPS loss when aging.", 0.1)
    lpips_lambda_crop: float = doc("Weight of the LPIPS loss on the face crop.", 0.6)
    id_lambda: float = doc("Weight of the identity loss.", 0.1)
    use_weighted_id_loss: bool = doc("Weight the identity loss by the age gap, 0.25*cos(pi*gap)+0.75.", True)
    w_norm_lambda: float = doc("Weight of the W-norm loss, mean over the batch of ||w_plus - latent_avg||.", 0.005)
    aging_lambda: float = doc("Weight of the aging loss (DEX estimate vs target age).", 5.0)
    cycle_lambda: float = doc("Weight of the whole cycle pass back to the input age.", 1.0)


@dataclass
class DataConfig:
    train_shards: Optional[str] = doc("Folder of training shards holding index.json (shards/build.py).", None)
    test_shards: Optional[str] = doc("Folder of test shards holding index.json (CelebA-HQ).", None)
    resolution: int = doc("Image side the shards were built at, in pixels; checked against index.json.", 256)
    shuffle_buffer: int = doc("Samples held in each loader worker's shuffle buffer.", 1000)
    num_workers: int = doc("paddle.io.DataLoader worker processes per rank (0 reads in the main process).", 2)
    flip_prob: float = doc("Probability of a horizontal flip of each training image.", 0.5)
    on_error: Literal["raise", "skip"] = doc(
        "What a corrupt shard does to training: raise stops every rank with the shard's name; skip"
        " reports it, moves on and counts it in stats.jsonl.",
        "raise",
    )
    keep_input_age_prob: float = doc(
        "Share of batches whose target age is the input's own estimated age (SAM uses 1/3).", 1.0 / 3.0
    )


@dataclass
class TrainConfig:
    batch_size: int = doc("Images per rank per micro-step.", 6)
    accumulate_steps: int = doc("Micro-steps whose gradients add up before one optimizer step.", 1)
    max_steps: int = doc("Optimizer steps to train for.", 500000)
    learning_rate: float = doc("Learning rate (constant, as in SAM).", 1e-4)
    optimizer: Literal["ranger", "adam"] = doc("Optimizer of the age encoder.", "ranger")
    seed: int = doc("Seed of the weights of networks without a file, the data order and the target ages.", 0)
    save_interval: int = doc("Optimizer steps between checkpoints.", 10000)
    keep_checkpoints: int = doc("Newest checkpoints kept; older ones are deleted.", 3)
    log_interval: int = doc("Optimizer steps between status lines and stats.jsonl records.", 50)
    image_interval: int = doc("Optimizer steps between VisualDL image grids.", 1000)
    image_ages: list = doc("Target ages shown in the VisualDL image grid.", factory=lambda: [0, 20, 40, 60, 80, 100])
    val_interval: int = doc("Optimizer steps between validation runs (0 disables validation).", 2500)
    val_images: int = doc("Images of data.test_shards in the fixed validation subset.", 64)
    best_metric: str = doc(
        "Validation metric that selects the best checkpoint: lpips, mse or id_similarity.", "lpips"
    )


@dataclass
class AmpConfig:
    enabled: bool = doc("Run the forward passes under automatic mixed precision.", False)
    dtype: Literal["float16", "bfloat16"] = doc("Low-precision dtype of AMP.", "float16")
    level: Literal["O1", "O2"] = doc("Paddle AMP level: O1 casts per op from white/black lists; O2 casts almost all ops.", "O1")
    init_loss_scaling: float = doc("Initial loss scale of float16 AMP.", 32768.0)


@dataclass
class EvalConfig:
    ages: list = doc("Target ages evaluated for each test image.", factory=lambda: list(range(0, 101, 10)))
    batch_size: int = doc("Images per rank per evaluation batch.", 4)
    on_missing_weights: Literal["error", "skip"] = doc(
        "A metric whose network has no weights file: error stops, skip leaves the metric out and says why.",
        "error",
    )
    num_grid_images: int = doc("Inputs shown across all ages in report.html.", 4)


@dataclass
class Config:
    output_dir: str = doc("Run folder: checkpoints/, stats.jsonl, vdl/ and eval/ go here.", "runs/default")
    model: ModelConfig = doc("Network sizes and SAM options.", factory=ModelConfig)
    weights: WeightsConfig = doc("Converted pretrained weight files; null runs that network on random weights.", factory=WeightsConfig)
    loss: LossConfig = doc("Loss weights.", factory=LossConfig)
    data: DataConfig = doc("Shards and streaming.", factory=DataConfig)
    train: TrainConfig = doc("Training loop.", factory=TrainConfig)
    amp: AmpConfig = doc("Automatic mixed precision.", factory=AmpConfig)
    eval: EvalConfig = doc("Evaluation.", factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
# Loading and validation.


def _check_value(dotted: str, value: Any, annotation: Any) -> Any:
    """Return `value` converted to the field's type, or raise ConfigError naming `dotted`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_value(dotted, value, inner)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected one of {', '.join(map(repr, args))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected an integer")
        return value
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; accept it as the number it spells.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"invalid value {value!r} for {dotted}: expected a number such as 1.0e-4") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected a string")
        return value
    if annotation is list:
        if not isinstance(value, list):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected a list such as [1, 2]")
        return value
    if annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"invalid value {value!r} for {dotted}: expected a mapping such as {{4: 32}}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} on {dotted}")


def _merge(node: Any, updates: dict, prefix: str) -> None:
    """Write `updates` into the dataclass `node`, validating every key and value."""
    hints = typing.get_type_hints(type(node))
    fields = {f.name for f in dataclasses.fields(node)}
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {known}")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"invalid value {value!r} for {dotted}: expected a mapping of its keys")
            _merge(current, value, f"{dotted}.")
        else:
            setattr(node, key, _check_value(dotted, value, hints[key]))


def parse_override(text: str) -> dict:
    """Turn 'train.max_steps=20' into {'train': {'max_steps': 20}}; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"invalid override {text!r}: expected key=value, e.g. -o train.max_steps=20")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    if not dotted:
        raise ConfigError(f"invalid override {text!r}: the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid value {raw!r} for {dotted}: not valid YAML ({exc})") from exc
    nested: dict = {}
    node = nested
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def validate(cfg: Config) -> None:
    """Reject value combinations that are individually valid but wrong together."""
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.accumulate_steps": cfg.train.accumulate_steps,
        "train.max_steps": cfg.train.max_steps,
        "train.save_interval": cfg.train.save_interval,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "train.log_interval": cfg.train.log_interval,
        "train.image_interval": cfg.train.image_interval,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "data.resolution": cfg.data.resolution,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"invalid value {value!r} for {key}: expected an integer >= 1")
    for key, value in {"train.val_interval": cfg.train.val_interval, "data.num_workers": cfg.data.num_workers,
                       "train.val_images": cfg.train.val_images}.items():
        if value < 0:
            raise ConfigError(f"invalid value {value!r} for {key}: expected an integer >= 0")
    if not 0.0 <= cfg.data.flip_prob <= 1.0:
        raise ConfigError(f"invalid value {cfg.data.flip_prob!r} for data.flip_prob: expected a probability in [0, 1]")
    if not 0.0 <= cfg.data.keep_input_age_prob <= 1.0:
        raise ConfigError(
            f"invalid value {cfg.data.keep_input_age_prob!r} for data.keep_input_age_prob: expected a probability in [0, 1]"
        )
    if cfg.train.learning_rate <= 0:
        raise ConfigError(f"invalid value {cfg.train.learning_rate!r} for train.learning_rate: expected > 0")
    for name, value in dataclasses.asdict(cfg.loss).items():
        if not isinstance(value, bool) and value < 0:
            raise ConfigError(f"invalid value {value!r} for loss.{name}: loss weights must be >= 0")
    if cfg.amp.init_loss_scaling <= 0:
        raise ConfigError(f"invalid value {cfg.amp.init_loss_scaling!r} for amp.init_loss_scaling: expected > 0")
    if not 0 <= cfg.train.seed < 2**32:
        raise ConfigError(f"invalid value {cfg.train.seed!r} for train.seed: expected an integer in [0, 2**32)")
    if cfg.eval.num_grid_images < 0:
        raise ConfigError(f"invalid value {cfg.eval.num_grid_images!r} for eval.num_grid_images: expected >= 0")
    if not cfg.output_dir.strip():
        raise ConfigError("output_dir is empty; set it to the run folder, e.g. -o output_dir=runs/my_run")
    size = cfg.model.output_size
    if size < 8 or size & (size - 1):
        raise ConfigError(f"invalid value {size!r} for model.output_size: expected a power of two >= 8")
    if len(cfg.model.encoder_widths) != 4:
        raise ConfigError(f"invalid value {cfg.model.encoder_widths!r} for model.encoder_widths: expected 4 stage widths")
    if cfg.model.start_from_latent_avg and cfg.model.start_from_encoded_w_plus:
        # The official code silently ignores the pSp encoder in this case; we refuse to guess.
        raise ConfigError(
            "model.start_from_latent_avg and model.start_from_encoded_w_plus are both true; the official code then"
            " ignores the pSp encoder without a word. Set one of them to false (SAM trains with"
            " start_from_encoded_w_plus: true)."
        )
    if cfg.train.best_metric not in ("lpips", "mse", "id_similarity"):
        raise ConfigError(
            f"invalid value {cfg.train.best_metric!r} for train.best_metric: expected lpips, mse or id_similarity"
        )
    for key, ages in (("eval.ages", cfg.eval.ages), ("train.image_ages", cfg.train.image_ages)):
        if not ages or any(isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= 100 for a in ages):
            raise ConfigError(f"invalid value {ages!r} for {key}: expected a list of integer ages in 0..100")
        if len(set(ages)) != len(ages):
            raise ConfigError(f"invalid value {ages!r} for {key}: every age may appear once")
    _validate_model(cfg.model, cfg.data)


def _positive_int_list(value: list, key: str, length: int) -> None:
    if len(value) != length or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ConfigError(f"invalid value {value!r} for {key}: expected {length} positive integers")


def _validate_model(model: ModelConfig, data: DataConfig) -> None:
    """Reject network sizes that cannot be built, naming the key."""
    if model.style_dim < 1 or model.n_mlp < 1 or model.channel_multiplier < 1:
        raise ConfigError("model.style_dim, model.n_mlp and model.channel_multiplier must be >= 1")
    if model.encoder_num_layers not in (50, 100, 152):
        raise ConfigError(f"invalid value {model.encoder_num_layers!r} for model.encoder_num_layers: expected 50, 100 or 152")
    _positive_int_list(model.encoder_widths, "model.encoder_widths", 4)
    _positive_int_list(model.id_net_widths, "model.id_net_widths", 4)
    _positive_int_list(model.dex_conv_widths, "model.dex_conv_widths", 5)
    if model.id_embedding_size < 1 or model.dex_fc_width < 1:
        raise ConfigError("model.id_embedding_size and model.dex_fc_width must be >= 1")
    if model.generator_channels is not None:
        needed = {2**i for i in range(2, int(math.log2(model.output_size)) + 1)}
        keys = set(model.generator_channels)
        if any(isinstance(k, bool) or not isinstance(k, int) for k in keys) or keys != needed or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in model.generator_channels.values()):
            raise ConfigError(
                f"invalid value {model.generator_channels!r} for model.generator_channels: expected integer widths for "
                f"exactly the resolutions {sorted(needed)}, e.g. -o 'model.generator_channels={{4: 32, 8: 32}}'"
            )
    # SAM's losses crop rows 35..222 and columns 32..219 of 256x256 images, so both sizes are fixed.
    for key, value in (("model.pool_size", model.pool_size), ("data.resolution", data.resolution)):
        if value != 256:
            raise ConfigError(f"invalid value {value!r} for {key}: SAM's losses need 256x256 images; set it to 256")


def load_config(path: Optional[str], overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Build the config from defaults, then the YAML file at `path`, then each `-o` override."""
    cfg = Config()
    if path is not None:
        config_path = Path(path)
        if not config_path.is_file():
            raise ConfigError(f"config file not found: {path}; pass -c with a file such as configs/tiny.yaml")
        try:
            data = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML in {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"invalid config {path}: the top level must be a mapping of keys")
        _merge(cfg, data, "")
    for text in overrides:
        _merge(cfg, parse_override(text), "")
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Return the config as plain nested dicts, ready for YAML or JSON."""
    return copy.deepcopy(dataclasses.asdict(cfg))


def config_from_dict(data: dict) -> Config:
    """Rebuild a config saved with config_to_dict, validating it as a file would be."""
    cfg = Config()
    _merge(cfg, data, "")
    validate(cfg)
    return cfg


def describe_keys(node: Any = None, prefix: str = "") -> list[tuple[str, str]]:
    """List (dotted key, documentation) for every leaf key, for help output and the README."""
    node = Config() if node is None else node
    rows = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(describe_keys(value, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", f.metadata.get("doc", "")))
    return rows


# ---------------------------------------------------------------------------------------------
# The official SAM training options (options/train_options.py of yuval-alaluf/SAM) and where each
# one lives here. A value of None means the option has no counterpart, for the reason given.

OFFICIAL_TRAIN_OPTIONS: dict[str, str | tuple[None, str]] = {
    "exp_dir": "output_dir",
    "dataset_type": (None, "the dataset is the shard folder in data.train_shards / data.test_shards"),
    "input_nc": (None, "fixed at 4 (RGB plus the age plane) by the SAM model"),
    "label_nc": (None, "pSp's label channels are unused by SAM (always 0)"),
    "output_size": "model.output_size",
    "batch_size": "train.batch_size",
    "test_batch_size": "eval.batch_size",
    "workers": "data.num_workers",
    "test_workers": (None, "evaluation reads its shards in the main process"),
    "learning_rate": "train.learning_rate",
    "optim_name": "train.optimizer",
    "train_decoder": (None, "the generator stays frozen, as in every released SAM model"),
    "start_from_latent_avg": "model.start_from_latent_avg",
    "start_from_encoded_w_plus": "model.start_from_encoded_w_plus",
    "lpips_lambda": "loss.lpips_lambda",
    "id_lambda": "loss.id_lambda",
    "l2_lambda": "loss.l2_lambda",
    "w_norm_lambda": "loss.w_norm_lambda",
    "aging_lambda": "loss.aging_lambda",
    "cycle_lambda": "loss.cycle_lambda",
    "lpips_lambda_crop": "loss.lpips_lambda_crop",
    "l2_lambda_crop": "loss.l2_lambda_crop",
    "lpips_lambda_aging": "loss.lpips_lambda_aging",
    "l2_lambda_aging": "loss.l2_lambda_aging",
    "stylegan_weights": "weights.stylegan",
    "checkpoint_path": "weights.sam",
    "max_steps": "train.max_steps",
    "image_interval": "train.image_interval",
    "board_interval": "train.log_interval",
    "val_interval": "train.val_interval",
    "save_interval": "train.save_interval",
    "target_age": (None, "training always draws targets as 'uniform_random' does; data.keep_input_age_prob sets the share kept"),
    "use_weighted_id_loss": "loss.use_weighted_id_loss",
    "pretrained_psp_path": "weights.psp_encoder",
}
