"""SAM's aging loss: the DEX classifier's expected age of the aged image against the target age.

Ages are in years (0..100) where named `*_years`; target ages are divided by 100, as in the age
channel of the encoder input.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from pipeline.models.dex_vgg import DEX_INPUT_SIZE


def _check_images(img):
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(
            f"DEX expects images shaped [B, 3, H, W] in [-1, 1], got shape {list(img.shape)}"
        )


def dex_logits(dex, img):
    """Resize `img` [B, 3, H, W] to 224x224 and return the DEX logits [B, 101].

    The resize is bilinear with half-pixel centres (align_corners False) and no antialiasing.
    The image goes in as it is, in [-1, 1], because the official loss applies no mean/std
    normalisation either.
    """
    _check_images(img)
    img_224 = F.interpolate(
        img, size=[DEX_INPUT_SIZE, DEX_INPUT_SIZE], mode="bilinear", align_corners=False, align_mode=0
    )
    return dex(img_224)


def expected_age_years(logits):
    """Return the expectation sum_j j * softmax(logits)_j over the age bins, in years ([B])."""
    probs = F.softmax(logits, axis=1)
    ages = paddle.arange(logits.shape[1], dtype=probs.dtype)
    return (probs * ages).sum(axis=1)


def estimate_ages(dex, img):
    """Return the expected age of each image in years ([B]); differentiable w.r.t. `img`."""
    return expected_age_years(dex_logits(dex, img))


def aging_loss(dex, aged_img, target_age):
    """Return mean((age(aged_img) / 100 - target_age)^2) over the batch (a scalar).

    `target_age` [B] is the target age divided by 100, as read from the encoder's age channel.
    """
    ages_years = estimate_ages(dex, aged_img)
    if list(target_age.shape) != list(ages_years.shape):
        raise ValueError(
            f"target_age has shape {list(target_age.shape)} but the batch contains "
            f"{ages_years.shape[0]} images; pass one target age per image, shaped [B]"
        )
    return F.mse_loss(ages_years / 100.0, target_age.astype(ages_years.dtype))


def freeze(layer):
    """Mark `layer` as in eval mode, stop gradients to its parameters and return it."""
    # Set the flags directly: Layer.eval() would also switch Paddle's global tracer mode.
    for sublayer in layer.sublayers(include_self=True):
        sublayer.training = False
    for param in layer.parameters():
        param.stop_gradient = True
    return layer


class AgingLoss(nn.Layer):
    """Aging loss around a frozen DEX network; gradients flow to the images only.

    DEX has no dropout or batch norm, so train and eval mode give the same ages.
    """

    def __init__(self, dex):
        super().__init__()
        self.dex = freeze(dex)

    def estimate_ages(self, img):
        """Return the expected age of each image in years ([B])."""
        return estimate_ages(self.dex, img)

    def forward(self, aged_img, target_age):
        """Return the aging loss of `aged_img` [B, 3, H, W] against `target_age` [B] (age / 100)."""
        return aging_loss(self.dex, aged_img, target_age)
