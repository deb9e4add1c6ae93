"""SAM: an age encoder's W+ residual on top of a frozen pSp encoder, rendered by a frozen StyleGAN2.

The attribute names (encoder, pretrained_encoder, decoder) and the latent_avg buffer match the
official checkpoint layout, so a converted sam_ffhq_aging.pt loads key for key.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.models.encoders import GradualStyleEncoder
from pipeline.models.stylegan2 import Generator


def num_styles(output_size: int) -> int:
    """Return the number of W+ style vectors of a generator (18 at 1024 px)."""
    return int(math.log2(output_size)) * 2 - 2


def add_age_channel(img: paddle.Tensor, age: paddle.Tensor) -> paddle.Tensor:
    """Append a constant plane holding `age` (a fraction of 100 years) to each image.

    img: [B, 3, H, W]; age: [B]. Returns [B, 4, H, W].
    """
    batch, _, height, width = img.shape
    plane = age.astype(img.dtype).reshape([batch, 1, 1, 1]).expand([batch, 1, height, width])
    return paddle.concat([img, plane], axis=1)


class SAM(nn.Layer):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_styles = num_styles(cfg.output_size)
        encoder_args = dict(
            num_layers=cfg.encoder_num_layers,
            mode="ir_se",
            n_styles=self.n_styles,
            stage_widths=tuple(cfg.encoder_widths),
            style_dim=cfg.style_dim,
        )
        self.encoder = GradualStyleEncoder(input_nc=4, **encoder_args)
        self.pretrained_encoder = (
            GradualStyleEncoder(input_nc=3, **encoder_args) if cfg.start_from_encoded_w_plus else None
        )
        channels = None
        if cfg.generator_channels is not None:
            channels = {int(res): int(ch) for res, ch in cfg.generator_channels.items()}
        self.decoder = Generator(
            cfg.output_size, cfg.style_dim, cfg.n_mlp, channel_multiplier=cfg.channel_multiplier, channels=channels
        )
        self.register_buffer("latent_avg", paddle.zeros([self.n_styles, cfg.style_dim]), persistable=True)
        for frozen in (self.pretrained_encoder, self.decoder):
            if frozen is not None:
                for param in frozen.parameters():
                    param.stop_gradient = True

    def trainable_parameters(self) -> list:
        """Return the parameters the optimizer updates: the age encoder's only."""
        return self.encoder.parameters()

    def set_train_mode(self) -> None:
        """Put the age encoder in train mode and the frozen networks in the mode SAM trains them in.

        With model.pretrained_encoder_bn_train (the default) the frozen pSp encoder runs in train
        mode as in the official code, so its BatchNorm uses batch statistics and its running
        statistics drift although no gradient reaches it.
        """
        self.train()
        self.decoder.eval()
        if self.pretrained_encoder is not None and not self.cfg.pretrained_encoder_bn_train:
            self.pretrained_encoder.eval()

    def encode(self, x_input: paddle.Tensor, encoder: nn.Layer | None = None) -> paddle.Tensor:
        """Return the W+ latent [B, n_styles, style_dim] for images carrying an age channel.

        `encoder` replaces self.encoder, e.g. by its data-parallel wrapper during training.
        """
        codes = (encoder or self.encoder)(x_input)
        if self.cfg.start_from_latent_avg:
            codes = codes + self.latent_avg
        elif self.pretrained_encoder is not None:
            with paddle.no_grad():
                encoded = self.pretrained_encoder(x_input[:, :-1]) + self.latent_avg
            codes = codes + encoded.detach()
        return codes

    def forward(self, x_input: paddle.Tensor, *, encoder: nn.Layer | None = None, resize: bool = True,
                randomize_noise: bool = True, noise: list | None = None):
        """Return (image, w_plus). The image is pooled to model.pool_size when `resize` is set."""
        w_plus = self.encode(x_input, encoder)
        image, _ = self.decoder([w_plus], input_is_latent=True, randomize_noise=randomize_noise, noise=noise)
        if resize:
            image = F.adaptive_avg_pool2d(image, self.cfg.pool_size)
        return image, w_plus
