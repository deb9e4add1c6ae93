"""Build the networks of a run from its config: SAM, the frozen loss networks and the optimizer.

Each pretrained network loads from the file its `weights.*` key names. A network without a file
runs on random weights (seeded by train.seed), and one warning names it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import paddle

from pipeline.checkpoint.pretrained import WeightsMismatchError, load_weights, read_weights
from pipeline.config import Config
from pipeline.train.checkpoint import CheckpointError
from pipeline.losses.aging import AgingLoss
from pipeline.losses.identity import IDLoss
from pipeline.models.dex_vgg import DexVGG
from pipeline.models.encoders import init_from_irse50
from pipeline.models.irse import Backbone
from pipeline.models.lpips import LPIPS
from pipeline.models.sam import SAM

log = logging.getLogger("sam")


def warn_random_weights(network: str, option: str) -> None:
    log.warning("no weights for %s (%s is null): it runs on RANDOM weights, so its outputs mean nothing", network, option)


def load_file_into(layer: paddle.nn.Layer, path: str, kind: str, option: str, prefix: str = "") -> dict:
    """Load a converted weights file into `layer` strictly; return the file's extra tensors."""
    loaded = load_weights(layer, path, kind, config_option=option, prefix=prefix)
    log.info("loaded %s weights from %s", kind, path)
    return loaded.extras


def build_sam(cfg: Config, encoder_from_checkpoint: bool = False) -> SAM:
    """Build SAM and fill it from weights.sam, or from the generator, pSp and IR-SE50 files.

    `encoder_from_checkpoint` means that a training checkpoint fills the age encoder next, so its
    IR-SE50 initialisation is skipped.
    """
    sam = SAM(cfg.model)
    weights = cfg.weights
    if weights.sam:
        load_file_into(sam, weights.sam, "sam", "weights.sam")
        return sam

    if weights.stylegan:
        extras = load_file_into(sam.decoder, weights.stylegan, "stylegan", "weights.stylegan")
        latent_avg = extras.get("latent_avg")
        if latent_avg is None:
            raise WeightsMismatchError(f"weights.stylegan file {weights.stylegan} contains no latent_avg; convert the official "
                             "stylegan2-ffhq-config-f.pt with checkpoints/convert.py")
        sam.latent_avg.set_value(np.tile(np.asarray(latent_avg, dtype="float32").reshape(1, -1), [sam.n_styles, 1]))
    else:
        warn_random_weights("the StyleGAN2 generator", "weights.stylegan")
        with paddle.no_grad():
            # latent_avg of a random generator: the mean of its mapping network over random z.
            mean_w = sam.decoder.mean_latent(4096)
        sam.latent_avg.set_value(mean_w.reshape([1, -1]).tile([sam.n_styles, 1]))

    if sam.pretrained_encoder is not None:
        if weights.psp_encoder:
            load_file_into(sam.pretrained_encoder, weights.psp_encoder, "psp_encoder", "weights.psp_encoder",
                           prefix="encoder.")
        else:
            warn_random_weights("the frozen pSp encoder", "weights.psp_encoder")

    if encoder_from_checkpoint:
        return sam
    if weights.irse50:
        irse50_state, _ = read_weights(weights.irse50, "irse50", config_option="weights.irse50")
        init_from_irse50(sam.encoder, irse50_state, np.random.default_rng(cfg.train.seed))
        log.info("initialised the age encoder's IR-SE50 body from %s", weights.irse50)
    else:
        log.warning("no IR-SE50 weights (weights.irse50 is null): the age encoder starts from random weights")
    return sam


def make_id_backbone(cfg: Config) -> Backbone:
    """Return the IR-SE50 ArcFace of the ID loss, sized by the config, without weights."""
    return Backbone(112, 50, "ir_se", 0.6, True, stage_widths=tuple(cfg.model.id_net_widths),
                    embedding_size=cfg.model.id_embedding_size)


def make_dex(cfg: Config) -> DexVGG:
    """Return the DEX VGG age classifier, sized by the config, without weights."""
    return DexVGG(conv_widths=tuple(cfg.model.dex_conv_widths), fc_width=cfg.model.dex_fc_width)


def fill_or_warn(layer, cfg: Config, kind: str, network: str):
    """Load weights.<kind> into `layer`, or warn that `network` runs on random weights; return `layer`."""
    path = getattr(cfg.weights, kind)
    if path:
        load_file_into(layer, path, kind, f"weights.{kind}")
    else:
        warn_random_weights(network, f"weights.{kind}")
    return layer


def build_id_loss(cfg: Config) -> IDLoss:
    return IDLoss(fill_or_warn(make_id_backbone(cfg), cfg, "irse50", "the IR-SE50 identity network"))


def build_aging_loss(cfg: Config) -> AgingLoss:
    return AgingLoss(fill_or_warn(make_dex(cfg), cfg, "dex", "the DEX age classifier"))


def build_lpips(cfg: Config) -> LPIPS:
    lpips = fill_or_warn(LPIPS("alex"), cfg, "lpips", "LPIPS (AlexNet and its linear heads)")
    lpips.freeze()
    return lpips


def load_model_state(sam: SAM, state: dict, source: str) -> None:
    """Load a training checkpoint's model state (age encoder and pSp BatchNorm statistics) into `sam`."""
    own = {f"encoder.{k}": v for k, v in sam.encoder.state_dict().items()}
    if sam.pretrained_encoder is not None:
        own.update({f"pretrained_encoder.{k}": v for k, v in sam.pretrained_encoder.state_dict().items()})
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in own if k.startswith("encoder.") and k not in state)
    if unexpected or missing:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            f" ({len(missing)} missing, {len(unexpected)} unexpected); check model.* against its config.yaml"
        )
    for key, value in state.items():
        target = own[key]
        if list(target.shape) != list(value.shape):
            raise CheckpointError(f"checkpoint {source}: {key} has shape {list(value.shape)}, "
                             f"the model expects {list(target.shape)}; check model.* against its config.yaml")
        target.set_value(paddle.to_tensor(value, dtype=target.dtype))


@dataclass
class Components:
    sam: SAM
    id_loss: IDLoss
    aging: AgingLoss
    lpips: LPIPS

    def load_model_state(self, state: dict, source: str) -> None:
        load_model_state(self.sam, state, source)


def build_components(cfg: Config) -> Components:
    sam = build_sam(cfg)
    return Components(sam=sam, id_loss=build_id_loss(cfg), aging=build_aging_loss(cfg), lpips=build_lpips(cfg))


def build_optimizer(cfg: Config, sam: SAM):
    """Build the optimizer over the age encoder's parameters only; the frozen networks get none."""
    # BatchNorm statistics are Paddle parameters with stop_gradient set; the optimizer skips them.
    named = [(f"encoder.{name}", p) for name, p in sam.encoder.named_parameters() if not p.stop_gradient]
    if cfg.train.optimizer == "adam":
        # NOTE: Paddle's Adam keys its state by auto-generated parameter names, so resuming it needs the
        # networks built in the same order, which build_components guarantees.
        return paddle.optimizer.Adam(learning_rate=cfg.train.learning_rate, parameters=[p for _, p in named])
    from pipeline.optim.ranger import Ranger

    return Ranger(parameters=[p for _, p in named], learning_rate=cfg.train.learning_rate,
                  param_names={p.name: n for n, p in named})
