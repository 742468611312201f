"""Training losses: Spike2Former's set criterion (mask classification) and SpikeFPN's per-pixel CE.

``SetCriterion`` reproduces the released head's loss:

* per image, queries are matched to GT masks (one per class present in the
  semantic map) by :class:`recipes.matcher.HungarianMatcher`;
* ``loss_cls``: softmax cross-entropy over K+1 classes, unmatched queries
  labelled K ("no object"), class weights 1 (classes) and 0.1 (no object),
  averaged by the sum of the weights of the batch's targets (i.e. the
  weighted mean of ``F.cross_entropy``);
* ``loss_focal``: 20 x binary sigmoid focal loss (alpha 0.25, gamma 2) of the
  matched queries' mask logits, bilinearly upsampled (align_corners=False) to
  the GT resolution, summed and divided by ``num_matched * H * W``;
* ``loss_dice``: 1 x naive dice loss (eps 1) of the same, divided by ``num_matched``;
* ``num_matched = max(mean over ranks of the batch's #matched, 1)``, per prediction
  (all predictions are matched first, then one all-reduce averages the counts);
* deep supervision: every prediction in ``outputs`` (7 for Spike2Former)
  gets the three losses, equally weighted; the last is reported as
  ``loss_*``, the earlier ones as ``d{i}.loss_*``; ``loss`` is the total.

Semantic loss (``semantic_weight > 0``; not in the paper nor the official code; off by default, on in
the camvid recipe): ``loss_sem``, a per-pixel cross-entropy of the last prediction's semantic scores,
the very scores semantic inference takes the arg-max of, ``S_c(p) = sum_q softmax(cls_q)[c] sigmoid(m_q(p))``. The scores are
normalised over the K classes, ``P_c = S_c / sum_k S_k``, bilinearly upsampled to the label's (padded)
resolution, and the loss is ``semantic_weight x`` the weighted mean of ``-log P_y`` over the valid pixels,
with per-class weights ``semantic_class_weight`` (e.g. :func:`median_frequency_weights`). The set losses
give every matched mask the same weight whatever its area, but a class whose masks never localise
(thin poles and signs) costs them little; this term charges every pixel of the arg-max the metric scores.

Ignored pixels (deviation from the official code, which treats them as
background of every mask): pixels labelled ``ignore_index`` -- and the padding
the model adds to reach a multiple of 32 -- contribute nothing to the mask
losses. The predictions are upsampled to the (padded) GT resolution as usual,
then the focal loss of ignored pixels is zeroed and the sigmoid probabilities
of ignored pixels are zeroed before the dice sums (the GT masks are already 0
there). The normalisers keep the official form (``num_matched * H * W`` for
focal, with H x W the full padded size), so the loss scale matches the
official one when no pixel is ignored. The matcher gets the same valid map, so
matching costs and losses agree. The classification loss is unaffected (a
class present only under ignored pixels cannot appear: those pixels have no class).

Point sampling (``num_points``, off by default as in the official code): the focal and dice
losses are evaluated at ``num_points`` points per matched mask instead of every pixel, chosen as
Mask2Former does (3x oversampled uniform points, the 75% most uncertain kept, 25% uniform). Logits are
sampled bilinearly at the points (the same values the full-resolution upsampling gives at pixel
centres) and targets read from the pixel under each point; the focal loss becomes the mean over the
points (the full-resolution sum divided by H x W, estimated). 12,544 points at 352x480 evaluate 7% of
the pixels.

Resolution: the models pad the input to a multiple of 32 (bottom/right) and
predict masks at half the *padded* size, while labels usually have the
unpadded size. With ``mask_stride=2`` (default) a label [H, W] is padded with
``ignore_index`` to ``(2h, 2w)`` (h x w: the mask logits), so the GT lines up
with the predictions; this equals the official behaviour (the batch is padded
with 255) except that padding is ignored rather than background. With
``mask_stride=None`` predictions are resized straight to the label size (use
it when the labels are already at the padded size or the model does not pad).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .matcher import HungarianMatcher, semantic_to_targets

__all__ = ["SetCriterion", "PerPixelCrossEntropy", "sigmoid_focal_loss", "dice_loss", "align_to_label",
           "semantic_score_loss", "median_frequency_weights", "targets_to_semantic",
           "matched_mask_losses", "point_mask_losses", "sample_uncertain_points", "sample_logits", "sample_masks"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise binary focal loss (RetinaNet), no reduction."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: Optional[torch.Tensor] = None,
              eps: float = 1.0) -> torch.Tensor:
    """Per-mask naive dice loss ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)``: [M, ...] -> [M]."""
    prob = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    if valid is not None:
        valid = valid.flatten(1)
        prob, targets = prob * valid, targets * valid
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


def _mean_over_ranks(values: List[float], device: torch.device) -> List[float]:
    """Element-wise mean over ranks (identity when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def align_to_label(logits: torch.Tensor, label_size: Tuple[int, int], stride: Optional[int]) -> torch.Tensor:
    """Bilinear upsampling of [..., h, w] logits to a label's [H, W].

    ``stride=s``: upsample to the padded size ``(s h, s w)`` and crop the top-left
    H x W (the models pad bottom/right); ``stride=None``: resize straight to H x W.
    """
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:]) if logits.dim() != 4 else logits
    if stride is None:
        out = F.interpolate(x, size=tuple(label_size), mode="bilinear", align_corners=False)
    else:
        padded = (stride * logits.shape[-2], stride * logits.shape[-1])
        if label_size[0] > padded[0] or label_size[1] > padded[1]:
            raise ValueError(f"label size {tuple(label_size)} exceeds the padded prediction size {padded} "
                             f"(logits {tuple(logits.shape[-2:])} x stride {stride})")
        out = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)
        out = out[..., : label_size[0], : label_size[1]]
    return out.reshape(*lead, *out.shape[-2:])


def _mask_loss_terms(low: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float,
                     eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per mask the focal sum and dice loss of ``low`` [M, h, w] upsampled to ``gt``'s size, and the two
    element-wise derivatives [M, 2, H, W] (focal, dice) w.r.t. the upsampled logits.

    With t in {0, 1}, flip = 1 - 2t and s = flip x, every term is a function of s:
    q = 1 - p_t = sigmoid(s), ce = -log(p_t) = softplus(s), p = t + flip q, p (1 - p) = q (1 - q).
    Using t v (not t) in flip changes nothing where v = 0, since every term is multiplied by v.
    Written as one expression graph so that ``torch.compile`` fuses it into a few passes over memory.
    """
    x = F.interpolate(low[:, None], size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    v = valid.to(x.dtype)
    tv = (gt & valid).to(x.dtype)
    flip = 1.0 - 2.0 * tv
    s = x * flip
    q = torch.sigmoid(s)
    ce = F.softplus(s)
    # alpha_t v q^gamma, alpha_t = alpha for t = 1, 1 - alpha for t = 0
    weight = (v * (1.0 - alpha) + tv * (2.0 * alpha - 1.0)) * (q * q if gamma == 2.0 else q.pow(gamma))
    focal = (weight * ce).sum((1, 2))
    # d focal / dx = flip alpha_t v q^gamma (gamma (1 - q) ce + q)
    d_focal = ((1.0 - q) * ce * gamma + q) * weight * flip
    # dice = 1 - N / S with N = 2 sum(p t v) + eps, S = sum(p v) + sum(t v) + eps;
    # d dice / dx = (N v - 2 S t v) q (1 - q) / S^2
    p = flip * q + tv
    numerator = 2 * (p * tv).sum((1, 2)) + eps
    denominator = (p * v).sum((1, 2)) + tv.sum((1, 2)) + eps
    dice = 1 - numerator / denominator
    d_dice = ((v * numerator[:, None, None] - tv * (2.0 * denominator)[:, None, None]) * (q * (1.0 - q))
              / denominator.square()[:, None, None])
    return focal, dice, torch.stack([d_focal, d_dice], 1)


_compiled_terms = None


def _terms_function(compiled: bool):
    """``_mask_loss_terms``, compiled with Inductor when asked (once per process); eager when that fails."""
    global _compiled_terms
    if not compiled:
        return _mask_loss_terms
    if _compiled_terms is None:
        _compiled_terms = torch.compile(_mask_loss_terms, dynamic=True)
    return _compiled_terms


class _MatchedMaskLosses(torch.autograd.Function):
    """Per-mask focal sums and dice losses of upsampled logits; gradients formed in forward.

    The full-resolution tensors (upsampled logits, probabilities, focal terms) live
    one chunk of masks at a time and are never saved: forward also evaluates the
    two Jacobian rows of each mask w.r.t. its low-resolution logits (the element-wise
    derivatives pulled back through the bilinear upsampling), and backward only
    scales them. Autograd through the same expressions would keep about eight
    full-resolution tensors per prediction alive until backward (1.2 GB for the
    seven predictions of spike2former_ade20k at 512x512).
    """

    @staticmethod
    def forward(ctx, logits, gt, valid, alpha, gamma, eps, compiled):
        size = tuple(gt.shape[-2:])
        chunk = max(1, (1 << 22) // (size[0] * size[1]))  # ~16 MB per full-resolution temporary
        terms = _terms_function(compiled)
        focal_sums, dice, jacobians = [], [], []
        for start in range(0, logits.shape[0], chunk):
            low = logits[start:start + chunk]
            try:
                focal, dice_loss_, pair = terms(low, gt[start:start + chunk], valid[start:start + chunk],
                                                alpha, gamma, eps)
            except Exception as err:  # no C++ compiler, or an Inductor failure: the eager terms are equal
                if terms is _mask_loss_terms:
                    raise
                _disable_compiled_terms(err)
                terms = _mask_loss_terms
                focal, dice_loss_, pair = terms(low, gt[start:start + chunk], valid[start:start + chunk],
                                                alpha, gamma, eps)
            focal_sums.append(focal)
            dice.append(dice_loss_)
            jacobians.append(torch.ops.aten.upsample_bilinear2d_backward(
                pair, size, [low.shape[0], 2, *low.shape[-2:]], False))
            del pair
        jacobians = torch.cat(jacobians)
        ctx.save_for_backward(jacobians[:, 0], jacobians[:, 1])
        return torch.cat(focal_sums), torch.cat(dice)

    @staticmethod
    def backward(ctx, grad_focal, grad_dice):
        focal_jac, dice_jac = ctx.saved_tensors
        grad = focal_jac * grad_focal[:, None, None] + dice_jac * grad_dice[:, None, None]
        return grad, None, None, None, None, None, None


def _disable_compiled_terms(err: Exception) -> None:
    global _compiled_terms
    import logging
    logging.getLogger("recipes").warning(
        "torch.compile of the mask losses failed (%s: %s); using the eager path, which computes the same "
        "losses more slowly. Set loss.compile=False to skip the attempt.", type(err).__name__,
        str(err).splitlines()[0] if str(err) else "")
    _compiled_terms = _mask_loss_terms


def matched_mask_losses(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.25,
                        gamma: float = 2.0, eps: float = 1.0, compiled: bool = False
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Focal-loss sums and dice losses of low-resolution mask logits against full-resolution masks.

    ``logits`` [M, h, w] are bilinearly upsampled (align_corners=False) to the size of
    ``gt`` [M, H, W] (bool) and ``valid`` [M, H, W] (bool; invalid pixels count for
    nothing). Returns ``(focal [M], dice [M])``: per mask the sum over pixels of
    :func:`sigmoid_focal_loss` times ``valid``, and :func:`dice_loss` with ``valid``.
    Equal to those functions applied to :func:`align_to_label` output, gradients
    included, at a fraction of the memory (see :class:`_MatchedMaskLosses`).
    ``compiled=True`` evaluates the element-wise terms through ``torch.compile`` (one fused
    kernel instead of about twenty passes; about 2x faster on CPU; equal up to float rounding),
    falling back to eager with a warning where Inductor cannot compile (no C++ compiler).
    """
    if logits.dim() != 3 or gt.shape[0] != logits.shape[0] or gt.shape != valid.shape:
        raise ValueError(f"expected logits [M, h, w], gt and valid [M, H, W]; got {tuple(logits.shape)}, "
                         f"{tuple(gt.shape)} and {tuple(valid.shape)}")
    return _MatchedMaskLosses.apply(logits.float(), gt.bool(), valid.bool(), float(alpha), float(gamma),
                                    float(eps), bool(compiled))


# Mask2Former's point sampling: of oversample_ratio x num_points uniform points, the
# importance_sample_ratio x num_points with the most uncertain logits (|x| smallest), and the rest uniform.
OVERSAMPLE_RATIO = 3.0
IMPORTANCE_SAMPLE_RATIO = 0.75


def sample_uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float = OVERSAMPLE_RATIO,
                            importance_sample_ratio: float = IMPORTANCE_SAMPLE_RATIO) -> torch.Tensor:
    """Point coordinates [M, num_points, 2] as (y, x) in [0, 1) for mask logits [M, h, w].

    Draws ``oversample_ratio * num_points`` uniform points per mask, keeps the
    ``importance_sample_ratio * num_points`` whose bilinearly sampled logit is closest to 0 (the
    most uncertain), and adds uniform points for the rest (Mask2Former's scheme; the global torch
    RNG, so a resumed run draws the same points).
    """
    masks = logits.shape[0]
    drawn = max(num_points, int(num_points * oversample_ratio))
    candidates = torch.rand(masks, drawn, 2, device=logits.device)
    with torch.no_grad():
        uncertainty = -sample_logits(logits.detach(), candidates).abs()
    important = int(num_points * importance_sample_ratio)
    top = uncertainty.topk(important, dim=1).indices
    chosen = candidates.gather(1, top[..., None].expand(-1, -1, 2))
    uniform = torch.rand(masks, num_points - important, 2, device=logits.device)
    return torch.cat([chosen, uniform], dim=1)


def sample_logits(logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [M, N] of logits [M, h, w] at points [M, N, 2] ((y, x) in [0, 1]).

    The value at a full-resolution pixel centre equals that pixel of the bilinear upsampling
    (align_corners=False) the full-resolution losses use: both read the low-resolution map at the same
    continuous position and clamp at the border.
    """
    grid = points.flip(-1).mul(2.0).sub(1.0)[:, None]  # grid_sample wants (x, y) in [-1, 1]
    return F.grid_sample(logits[:, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0, 0]


def sample_masks(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The pixels [M, N] of masks [M, H, W] (any dtype) that contain points [M, N, 2] ((y, x) in [0, 1))."""
    height, width = masks.shape[-2:]
    rows = (points[..., 0] * height).long().clamp_(0, height - 1)
    cols = (points[..., 1] * width).long().clamp_(0, width - 1)
    return masks.flatten(1).gather(1, rows * width + cols)


def point_mask_losses(logits: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, points: torch.Tensor,
                      alpha: float = 0.25, gamma: float = 2.0, eps: float = 1.0
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Focal-loss means and dice losses of mask logits [M, h, w] at points [M, N, 2] of the masks
    ``gt``/``valid`` [M, H, W]: per mask the mean over the points of the focal loss times ``valid``,
    and the dice loss over the points. With one point at every pixel centre these are the
    full-resolution :func:`matched_mask_losses` (focal divided by H x W).
    """
    x = sample_logits(logits.float(), points)
    v = sample_masks(valid, points).to(x.dtype)
    t = sample_masks(gt & valid, points).to(x.dtype)
    focal = (sigmoid_focal_loss(x, t, alpha, gamma) * v).mean(1)
    return focal, dice_loss(x, t, v, eps)


def median_frequency_weights(labels: Iterable[torch.Tensor], num_classes: int, ignore_index: int = 255
                             ) -> torch.Tensor:
    """Median frequency balancing (Eigen & Fergus 2015, as SegNet weights CamVid): ``w_c = median(f) / f_c``.

    ``f_c`` is the pixel count of class c divided by the pixel count of the label maps in which c appears
    (ignored pixels count nowhere); the median runs over the classes that appear (the lower middle
    value for an even count). A class that never
    appears gets weight 0 (nothing to learn it from). ``labels``: label maps of any shape, values in
    ``0..num_classes-1`` or ``ignore_index``.
    """
    class_pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for label in labels:
        label = torch.as_tensor(label).flatten().long()
        label = label[label != ignore_index]
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
            raise ValueError(f"label values must lie in 0..{num_classes - 1} or be {ignore_index}; got "
                             f"{sorted(set(label.unique().tolist()) - set(range(num_classes)))[:5]}")
        counts = torch.bincount(label, minlength=num_classes).double()
        class_pixels += counts
        image_pixels += (counts > 0).double() * label.numel()
    present = class_pixels > 0
    if not bool(present.any()):
        raise ValueError("no labelled pixel in the label maps: cannot weigh the classes")
    frequency = torch.where(present, class_pixels / image_pixels.clamp_min(1), torch.zeros_like(class_pixels))
    weights = torch.where(present, frequency[present].median() / frequency.clamp_min(1e-300),
                          torch.zeros_like(frequency))
    return weights.float()


def targets_to_semantic(labels: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                        ignore_index: int = 255) -> torch.Tensor:
    """A label map [H, W] from per-segment ``labels`` [N] and non-overlapping ``masks`` [N, H, W]: each pixel
    takes its segment's class, ``ignore_index`` where no segment covers it or ``valid`` is False."""
    if masks.shape[0] == 0:
        return torch.full(valid.shape, ignore_index, dtype=torch.long, device=valid.device)
    covered = masks.any(0) & valid
    label = labels.long()[masks.to(torch.uint8).argmax(0)]
    return torch.where(covered, label, torch.full_like(label, ignore_index))


def semantic_score_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, label: torch.Tensor,
                        class_weight: Optional[torch.Tensor] = None, ignore_index: int = 255,
                        eps: float = 1e-6) -> torch.Tensor:
    """Cross-entropy of the normalised semantic scores (module docstring, "Semantic loss").

    ``class_logits`` [B, Q, K+1], ``mask_logits`` [B, Q, h, w], ``label`` [B, H, W] at the padded size
    (H, W multiples of h, w: the scores are upsampled bilinearly to it). The mean over non-ignored pixels,
    weighted by ``class_weight`` [K] when given; 0 (with a graph) when every pixel is ignored.
    """
    probs = class_logits.float().softmax(-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", probs, mask_logits.float().sigmoid())
    scores = scores / scores.sum(1, keepdim=True).clamp_min(eps)
    if tuple(scores.shape[-2:]) != tuple(label.shape[-2:]):
        scores = F.interpolate(scores, size=tuple(label.shape[-2:]), mode="bilinear", align_corners=False)
    label = label.long()
    if not bool((label != ignore_index).any()):
        return scores.sum() * 0.0
    weight = None if class_weight is None else class_weight.to(scores.device, torch.float32)
    return F.nll_loss(scores.clamp_min(eps).log(), label, weight=weight, ignore_index=ignore_index)


class SetCriterion:
    """Spike2Former's loss: Hungarian matching + CE / focal / dice on every prediction.

    ``criterion(outputs, targets)`` with ``outputs = {"pred_logits": [L, B, Q, K+1],
    "pred_masks": [L, B, Q, h, w]}`` (``[B, ...]`` without L is one prediction) and
    ``targets`` either semantic label maps (a [B, H, W] tensor or a list of [H, W]
    tensors; converted with :func:`semantic_to_targets`) or a list of per-image
    ``(labels [N], masks [N, H, W])`` / ``(labels, masks, valid [H, W])`` tuples or
    dicts with those keys (e.g. instance masks for panoptic training).
    Returns a dict of scalar tensors (see the module docstring), ``loss`` being the total.
    """

    def __init__(self, num_classes: int, matcher: Optional[HungarianMatcher] = None,
                 no_object_weight: float = 0.1, class_weight: float = 1.0, focal_weight: float = 20.0,
                 dice_weight: float = 1.0, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 dice_eps: float = 1.0, mask_stride: Optional[int] = 2, compile_mask_losses: bool = False,
                 num_points: Optional[int] = None, semantic_weight: float = 0.0,
                 semantic_class_weight: Optional[Sequence[float]] = None):
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.no_object_weight = no_object_weight
        self.class_weight, self.focal_weight, self.dice_weight = class_weight, focal_weight, dice_weight
        self.focal_alpha, self.focal_gamma, self.dice_eps = focal_alpha, focal_gamma, dice_eps
        self.mask_stride = mask_stride
        self.compile_mask_losses = compile_mask_losses
        self.num_points = num_points
        self.semantic_weight = semantic_weight
        self.semantic_class_weight = (None if semantic_class_weight is None
                                      else torch.as_tensor(semantic_class_weight, dtype=torch.float32))
        if self.semantic_class_weight is not None and self.semantic_class_weight.shape != (num_classes,):
            raise ValueError(f"semantic_class_weight needs one weight per class ({num_classes}), got "
                             f"{tuple(self.semantic_class_weight.shape)}")
        self.empty_weight = torch.ones(num_classes + 1)
        self.empty_weight[-1] = no_object_weight

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_classes={self.num_classes}, matcher={self.matcher!r}, "
                f"no_object_weight={self.no_object_weight}, class_weight={self.class_weight}, "
                f"focal_weight={self.focal_weight}, dice_weight={self.dice_weight}"
                + (f", semantic_weight={self.semantic_weight}" if self.semantic_weight else "") + ")")

    # ------------------------------------------------------------------ targets
    def prepare_targets(self, targets, mask_size: Tuple[int, int], ignore_index: int = 255,
                        device: Optional[torch.device] = None
                        ) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image ``(labels [N], masks [N, H', W'] bool, valid [H', W'] bool)`` on ``device``.

        H' x W' is the padded size ``mask_stride * mask_size`` (labels padded with
        ``ignore_index``, i.e. invalid), or the label size when ``mask_stride`` is None.
        """
        if isinstance(targets, torch.Tensor):
            if targets.dim() != 3:
                raise ValueError(f"semantic targets must be [B, H, W], got {tuple(targets.shape)}")
            targets = list(targets)
        prepared = []
        for target in targets:
            if isinstance(target, torch.Tensor):
                label = target.to(device).long()
                valid = label != ignore_index
                label_out = label
                labels, masks = None, None
            else:
                if isinstance(target, dict):
                    labels, masks, valid = target["labels"], target["masks"], target.get("valid")
                else:
                    labels, masks, valid = (tuple(target) + (None,))[:3]
                labels, masks = labels.to(device).long(), masks.to(device).bool()
                valid = (torch.ones(masks.shape[-2:], dtype=torch.bool, device=device) if valid is None
                         else valid.to(device).bool())
            height, width = valid.shape
            if self.mask_stride is not None:
                padded = (self.mask_stride * mask_size[0], self.mask_stride * mask_size[1])
                if height > padded[0] or width > padded[1]:
                    raise ValueError(f"target size {(height, width)} exceeds the padded prediction size "
                                     f"{padded} (masks {tuple(mask_size)} x stride {self.mask_stride})")
                pad = (0, padded[1] - width, 0, padded[0] - height)
                valid = F.pad(valid, pad, value=False)
                if labels is None:
                    label_out = F.pad(label_out, pad, value=ignore_index)
                else:
                    masks = F.pad(masks, pad, value=False)
            if labels is None:
                labels, masks = semantic_to_targets(label_out, ignore_index)
            prepared.append((labels, masks, valid))
        return prepared

    # ------------------------------------------------------------------ losses
    def layer_losses(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, targets, indices,
                     num_matched: float) -> Dict[str, torch.Tensor]:
        """Losses of one prediction: class_logits [B, Q, K+1], mask_logits [B, Q, h, w], prepared targets,
        the matcher's indices and the (rank-averaged, >= 1) number of matched masks."""
        batch, queries = class_logits.shape[:2]
        device = class_logits.device
        target_classes = torch.full((batch, queries), self.num_classes, dtype=torch.int64, device=device)
        for b, ((query_idx, target_idx), (labels, _, _)) in enumerate(zip(indices, targets)):
            target_classes[b, query_idx] = labels[target_idx]
        weight = self.empty_weight.to(device)
        loss_cls = F.cross_entropy(class_logits.float().flatten(0, 1), target_classes.flatten(), weight=weight)

        # one gather over the flattened batch: per-image mask_logits[b, q] would give every image
        # its own zero-filled [B, Q, h, w] gradient buffer in backward
        flat_idx = torch.cat([b * queries + q.to(device) for b, (q, _) in enumerate(indices)])
        src = mask_logits.flatten(0, 1)[flat_idx]
        if src.shape[0] == 0:
            zero = mask_logits.sum() * 0.0
            return {"loss_cls": self.class_weight * loss_cls, "loss_focal": zero, "loss_dice": zero.clone()}
        gt = torch.cat([masks[t] for (_, t), (_, masks, _) in zip(indices, targets)])
        valid = torch.cat([v.expand(len(t), *v.shape) for (_, t), (_, _, v) in zip(indices, targets)])
        height, width = gt.shape[-2:]  # already padded to the predictions' upsampled size
        if self.num_points:
            points = sample_uncertain_points(src, self.num_points)
            focal, dice = point_mask_losses(src, gt, valid, points, self.focal_alpha, self.focal_gamma,
                                            self.dice_eps)
            loss_focal = focal.sum() / num_matched
        else:
            focal, dice = matched_mask_losses(src, gt, valid, self.focal_alpha, self.focal_gamma, self.dice_eps,
                                              compiled=self.compile_mask_losses)
            loss_focal = focal.sum() / (num_matched * height * width)
        loss_dice = dice.sum() / num_matched
        return {"loss_cls": self.class_weight * loss_cls, "loss_focal": self.focal_weight * loss_focal,
                "loss_dice": self.dice_weight * loss_dice}

    def __call__(self, outputs: Dict[str, torch.Tensor], targets, ignore_index: int = 255
                 ) -> Dict[str, torch.Tensor]:
        class_logits, mask_logits = outputs["pred_logits"], outputs["pred_masks"]
        if class_logits.dim() == 3:
            class_logits, mask_logits = class_logits[None], mask_logits[None]
        if class_logits.dim() != 4 or mask_logits.dim() != 5:
            raise ValueError("expected pred_logits [L, B, Q, K+1] and pred_masks [L, B, Q, h, w], got "
                             f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}")
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits has {class_logits.shape[-1]} classes, expected "
                             f"{self.num_classes} + 1 (no object)")
        prepared = self.prepare_targets(targets, tuple(mask_logits.shape[-2:]), ignore_index,
                                        device=mask_logits.device)
        if len(prepared) != class_logits.shape[1]:
            raise ValueError(f"{len(prepared)} targets for a batch of {class_logits.shape[1]}")
        if self.mask_stride is None:  # predictions go to each target's own size: batch them by size
            sizes = {tuple(v.shape) for _, _, v in prepared}
            if len(sizes) != 1:
                raise ValueError(f"targets of different sizes {sorted(sizes)} need mask_stride")
        num_layers = class_logits.shape[0]
        # unbind, not class_logits[layer]: each select's backward would allocate and zero a buffer
        # of the whole stacked [L, B, Q, h, w] tensor; unbind's backward stacks the L gradients once
        class_logits, mask_logits = class_logits.unbind(0), mask_logits.unbind(0)
        indices = [self.matcher(class_logits[layer], mask_logits[layer], prepared) for layer in range(num_layers)]
        # number of matched masks per layer, averaged over ranks in one collective
        local = [float(sum(len(q) for q, _ in layer_indices)) for layer_indices in indices]
        num_matched = [max(n, 1.0) for n in _mean_over_ranks(local, mask_logits[0].device)]

        losses: Dict[str, torch.Tensor] = {}
        for layer in range(num_layers):
            prefix = "" if layer == num_layers - 1 else f"d{layer}."
            for key, value in self.layer_losses(class_logits[layer], mask_logits[layer], prepared,
                                                indices[layer], num_matched[layer]).items():
                losses[prefix + key] = value
        if self.semantic_weight:
            label = torch.stack([targets_to_semantic(labels, masks, valid, ignore_index)
                                 for labels, masks, valid in prepared])
            losses["loss_sem"] = self.semantic_weight * semantic_score_loss(
                class_logits[-1], mask_logits[-1], label, self.semantic_class_weight, ignore_index)
        losses["loss"] = sum(losses.values())
        return losses


class PerPixelCrossEntropy:
    """SpikeFPN's loss: softmax CE of logits [B, K, h, w] against labels [B, H, W].

    The logits are upsampled bilinearly (align_corners=False) to the label size --
    with ``logit_stride=2`` (default) via the padded size ``(2h, 2w)`` then
    cropped, as the model pads its input bottom/right; ``None`` resizes directly.
    The loss is the mean over non-ignored pixels (mmseg's ``avg_non_ignore=True``),
    0 (with a graph) when every pixel is ignored. With ``class_weight`` [K] (the recipes'
    ``loss.semantic_class_weight``) it is the weighted mean, ``sum w_y * CE / sum w_y``, as in
    ``F.cross_entropy``.
    """

    def __init__(self, ignore_index: int = 255, logit_stride: Optional[int] = 2,
                 class_weight: Optional[Sequence[float]] = None, loss_weight: float = 1.0):
        self.ignore_index, self.logit_stride, self.loss_weight = ignore_index, logit_stride, loss_weight
        self.class_weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ignore_index={self.ignore_index}, logit_stride={self.logit_stride}"
                + ("" if self.class_weight is None else f", class_weight={self.class_weight.tolist()}") + ")")

    def __call__(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or label.dim() != 3:
            raise ValueError(f"expected logits [B, K, h, w] and label [B, H, W], got {tuple(logits.shape)} "
                             f"and {tuple(label.shape)}")
        logits = align_to_label(logits.float(), tuple(label.shape[-2:]), self.logit_stride)
        label = label.long()
        if not bool((label != self.ignore_index).any()):
            return logits.sum() * 0.0
        weight = None if self.class_weight is None else self.class_weight.to(logits.device)
        loss = F.cross_entropy(logits, label, weight=weight, ignore_index=self.ignore_index)
        return self.loss_weight * loss
