"""SAM's training objective: each term a small function, weighted as the released recipe does.

For one pass (the real pass to the target age, or the cycle pass back to the input age):
  id_lambda * ID + l2 weight * L2 + lpips weight * LPIPS + l2_lambda_crop * L2(face crop)
  + lpips_lambda_crop * LPIPS(face crop) + w_norm_lambda * W-norm + aging_lambda * aging,
where the whole-image L2 and LPIPS weights are the *_aging ones unless the batch keeps the input's
own age. The cycle pass's total is multiplied by cycle_lambda.
"""

from __future__ import annotations

from dataclasses import dataclass

import paddle
import paddle.nn.functional as F

from pipeline.config import LossConfig
from pipeline.losses.identity import age_gap_weights


def face_crop(img: paddle.Tensor) -> paddle.Tensor:
    """Return the inner face region [35:223, 32:220] of 256x256 images, as SAM's crop losses use."""
    return img[:, :, 35:223, 32:220]


def l2_loss(pred_img: paddle.Tensor, target_img: paddle.Tensor) -> paddle.Tensor:
    return F.mse_loss(pred_img, target_img)


def w_norm_loss(w_plus: paddle.Tensor, latent_avg: paddle.Tensor) -> paddle.Tensor:
    """Return the batch mean of the Frobenius norm of (w_plus - latent_avg); w_plus is [B, n_styles, dim]."""
    offset = w_plus - latent_avg
    return paddle.sqrt((offset * offset).sum(axis=[1, 2])).sum() / w_plus.shape[0]


@dataclass
class ReferenceFeatures:
    """Features of the target image that both passes of a step compare against, computed once."""

    lpips_whole: list
    lpips_crop: list
    id_feats: tuple  # (embeddings of the target, embeddings of the input); the same image in SAM


class SamObjective:
    """Compute one pass's weighted loss and its named terms.

    Args:
        cfg: loss weights.
        id_loss: IDLoss; id_loss(aged_img, target_img, src_img, weights=...) -> (loss, logs).
        lpips: LPIPS; lpips.batch_mean(x, y) -> scalar.
        aging: AgingLoss; aging(aged_img, target_age) -> scalar.
    """

    def __init__(self, cfg: LossConfig, id_loss, lpips, aging):
        self.cfg = cfg
        self.id_loss = id_loss
        self.lpips = lpips
        self.aging = aging

    def reference(self, src_img: paddle.Tensor) -> ReferenceFeatures:
        """Encode the target image for LPIPS (whole and face crop) and the ID network, without gradient."""
        with paddle.no_grad():
            return ReferenceFeatures(
                lpips_whole=self.lpips.net(src_img),
                lpips_crop=self.lpips.net(face_crop(src_img)),
                id_feats=self.id_loss.reference_feats(src_img, src_img),
            )

    def __call__(self, *, src_img, out_img, w_plus, latent_avg, target_age, input_age, keep_input_age: bool,
                 pass_name: str, reference: ReferenceFeatures | None = None) -> tuple[paddle.Tensor, dict]:
        """Return (weighted loss, {term name: detached value}) for one pass.

        src_img is both the encoder input and the reconstruction target, as in SAM's dataset.
        target_age and input_age are [B] ages divided by 100. `reference` holds src_img's features
        from reference(); the trainer computes it once for the real and the cycle pass.
        """
        cfg = self.cfg
        if reference is None:
            reference = self.reference(src_img)
        terms: dict = {}
        total = paddle.zeros([], dtype="float32")

        if cfg.id_lambda > 0:
            weights = None
            if cfg.use_weighted_id_loss:
                weights = age_gap_weights(target_age, input_age)  # host sync: float64 weights as SAM
            loss_id, id_logs = self.id_loss(out_img, src_img, src_img, weights=weights,
                                            reference_feats=reference.id_feats)
            terms["id"] = loss_id
            terms["id_improve"] = id_logs["id_improve"]
            total = total + cfg.id_lambda * loss_id
        if cfg.l2_lambda > 0:
            loss_l2 = l2_loss(out_img, src_img)
            terms["l2"] = loss_l2
            total = total + (cfg.l2_lambda if keep_input_age else cfg.l2_lambda_aging) * loss_l2
        if cfg.lpips_lambda > 0:
            loss_lpips = self.lpips.batch_mean_to_features(out_img, reference.lpips_whole)
            terms["lpips"] = loss_lpips
            total = total + (cfg.lpips_lambda if keep_input_age else cfg.lpips_lambda_aging) * loss_lpips
        if cfg.lpips_lambda_crop > 0:
            loss_lpips_crop = self.lpips.batch_mean_to_features(face_crop(out_img), reference.lpips_crop)
            terms["lpips_crop"] = loss_lpips_crop
            total = total + cfg.lpips_lambda_crop * loss_lpips_crop
        if cfg.l2_lambda_crop > 0:
            loss_l2_crop = l2_loss(face_crop(out_img), face_crop(src_img))
            terms["l2_crop"] = loss_l2_crop
            total = total + cfg.l2_lambda_crop * loss_l2_crop
        if cfg.w_norm_lambda > 0:
            loss_w_norm = w_norm_loss(w_plus, latent_avg)
            terms["w_norm"] = loss_w_norm
            total = total + cfg.w_norm_lambda * loss_w_norm
        if cfg.aging_lambda > 0:
            loss_aging = self.aging(out_img, target_age)
            terms["aging"] = loss_aging
            total = total + cfg.aging_lambda * loss_aging

        # SAM logs the cycle pass's total before cycle_lambda and backpropagates it after.
        terms["total"] = total
        if pass_name == "cycle":
            total = total * cfg.cycle_lambda
        logged = {f"{name}_{pass_name}": value.detach() if isinstance(value, paddle.Tensor) else value
                  for name, value in terms.items()}
        return total, logged
