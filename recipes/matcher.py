"""Ground-truth conversion and Hungarian matching for mask classification (Spike2Former / MaskFormer).

Spike2Former's official head matches queries to ground-truth masks as
MaskFormer does: no point sampling, the cost is evaluated on
the mask logits at prediction resolution (stride 2) against the GT masks
nearest-downsampled to that size, and

    cost = 1.0 * class  + 20.0 * focal  + 1.0 * dice

* class: ``-softmax(class_logits)[gt_label]``;
* focal: the binary sigmoid focal loss (alpha 0.25, gamma 2) of the query's
  mask against the GT mask, averaged over the pixels (log terms use eps 1e-12
  as in the official ``FocalLossCost``);
* dice: ``1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1)`` with ``p = sigmoid``.

The assignment is solved per image with ``scipy.optimize.linear_sum_assignment``.

A target may carry a third element, a boolean ``valid`` map (False on ignored
pixels); the matcher then leaves those pixels out of the focal and dice costs,
exactly as :class:`recipes.losses.SetCriterion` leaves them out of the losses.
Without it the matcher is the official one (ignored pixels are background of
every mask).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["semantic_to_targets", "HungarianMatcher", "downsample_masks"]


def semantic_to_targets(label: torch.Tensor, ignore_index: int = 255) -> Tuple[torch.Tensor, torch.Tensor]:
    """One binary mask per class present in a semantic map.

    :param label: [H, W] integer class ids; ``ignore_index`` pixels belong to no mask.
    :returns: ``(labels [N] int64, masks [N, H, W] bool)``, sorted by class id
        (N = 0 gives ``[0]`` and ``[0, H, W]``).
    """
    if label.dim() != 2:
        raise ValueError(f"label must be [H, W], got shape {tuple(label.shape)}")
    label = label.long()
    classes = torch.unique(label)  # sorted
    classes = classes[classes != ignore_index]
    masks = label.unsqueeze(0) == classes.view(-1, 1, 1)
    return classes, masks


def downsample_masks(masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """[N, H, W] masks -> [N, h, w] float, nearest neighbour (``F.interpolate`` 'nearest', as mmdet)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.float()
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    return F.interpolate(masks.unsqueeze(1).float(), size=size, mode="nearest").squeeze(1)


def _split_target(target) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(target, dict):
        return target["labels"], target["masks"], target.get("valid")
    if len(target) == 2:
        return target[0], target[1], None
    if len(target) == 3:
        return target[0], target[1], target[2]
    raise ValueError("a target is (labels, masks) or (labels, masks, valid)")


class HungarianMatcher:
    """One-to-one query/GT assignment minimising class + focal + dice costs.

    ``matcher(class_logits [B, Q, K+1], mask_logits [B, Q, h, w], targets)``
    where ``targets[b]`` is ``(labels [N_b], masks [N_b, H, W])`` (optionally
    ``valid [H, W]`` as a third element, or a dict with those keys). Returns, per
    image, ``(query_idx, target_idx)``: int64 tensors of length ``min(Q, N_b)``
    on the logits' device, sorted by query index.
    """

    def __init__(self, cost_class: float = 1.0, cost_focal: float = 20.0, cost_dice: float = 1.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, eps: float = 1e-12,
                 dice_eps: float = 1.0):
        self.cost_class, self.cost_focal, self.cost_dice = cost_class, cost_focal, cost_dice
        self.focal_alpha, self.focal_gamma, self.eps, self.dice_eps = focal_alpha, focal_gamma, eps, dice_eps

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(cost_class={self.cost_class}, cost_focal={self.cost_focal}, "
                f"cost_dice={self.cost_dice})")

    @torch.no_grad()
    def cost_matrix(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
                    masks: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One image's [Q, N] cost: class_logits [Q, K+1], mask_logits [Q, h, w], labels [N], masks [N, H, W]."""
        size = tuple(mask_logits.shape[-2:])
        num_pixels = size[0] * size[1]
        logits = mask_logits.float().flatten(1)                           # [Q, P]
        gt = downsample_masks(masks.to(logits.device), size).flatten(1)  # [N, P]
        prob = logits.sigmoid()
        # focal cost (binary): pixel-wise cost if the pixel were positive / negative; [Q, P] maps
        # are formed in place (each is 26 MB per state at 512x512, 7 states per image)
        pos = (prob + self.eps).log_().mul_(-self.focal_alpha).mul_(torch.sub(1, prob).pow_(self.focal_gamma))
        neg = torch.sub(1, prob).add_(self.eps).log_().mul_(self.focal_alpha - 1).mul_(prob.pow(self.focal_gamma))
        if valid is not None:
            keep = downsample_masks(valid.to(logits.device)[None], size).flatten(1)  # [1, P]
            gt, neg_total, prob = gt * keep, (neg * keep).sum(-1), prob.mul_(keep)
        else:
            neg_total = neg.sum(-1)
        # pos @ gt^T + neg @ (valid - gt)^T, with one matrix product
        focal = (pos.sub_(neg) @ gt.T + neg_total[:, None]) / num_pixels
        del pos, neg
        # dice cost (naive, on sigmoid probabilities)
        numerator = 2 * prob @ gt.T
        denominator = prob.sum(-1)[:, None] + gt.sum(-1)[None, :]
        dice = 1 - (numerator + self.dice_eps) / (denominator + self.dice_eps)
        cls = -class_logits.float().softmax(-1)[:, labels.to(class_logits.device).long()]
        return self.cost_class * cls + self.cost_focal * focal + self.cost_dice * dice

    @torch.no_grad()
    def __call__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                 targets: Sequence) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        if class_logits.dim() != 3 or mask_logits.dim() != 4:
            raise ValueError("expected class_logits [B, Q, K+1] and mask_logits [B, Q, h, w], got "
                             f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}")
        if len(targets) != class_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {class_logits.shape[0]}")
        device = class_logits.device
        indices = []
        for b, target in enumerate(targets):
            labels, masks, valid = _split_target(target)
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=device)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(class_logits[b], mask_logits[b], labels, masks, valid)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64, device=device),
                            torch.as_tensor(cols, dtype=torch.int64, device=device)))
        return indices
