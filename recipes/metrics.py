"""Evaluation metrics: semantic segmentation (mIoU / mAcc / aAcc) and panoptic quality (PQ / SQ / RQ).

Both accumulate integer statistics with ``torch.bincount`` (deterministic, no
Python loop over pixels) and can be summed across ranks with :meth:`reduce`
when ``torch.distributed`` is initialised. Results are in percent.

``SemanticMetrics`` follows mmsegmentation's ``IoUMetric``: pixels labelled
``ignore_index`` are dropped (from prediction counts too); per class
``IoU = TP / (GT area + predicted area - TP)`` and ``Acc = TP / GT area``; a class
with a zero denominator gets NaN and is left out of the mean. So a class absent
from both GT and prediction is excluded from mIoU and mAcc, a class predicted
but absent from the GT counts as IoU 0 in mIoU and is excluded from mAcc.

``PanopticQuality`` follows panopticapi's ``pq_compute`` (COCO panoptic):
per image, a GT segment and a predicted segment of the same category match when
``IoU > 0.5`` (strict), where the union leaves out the predicted segment's
pixels that are void in the GT; a match adds 1 to TP and its IoU to the IoU
sum; unmatched non-crowd GT segments are FN; an unmatched predicted segment is
FP unless more than half of it lies on GT void pixels plus GT crowd regions of
its category. Per category ``PQ = iou_sum / (TP + FP/2 + FN/2)``,
``SQ = iou_sum / TP`` (0 when TP = 0), ``RQ = TP / (TP + FP/2 + FN/2)``; the
averages (all, things, stuff) run over the categories with ``TP + FP + FN > 0``;
the others are NaN per class.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

__all__ = ["SemanticMetrics", "PanopticQuality"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks (returned on the tensor's own device)."""
    device = tensor.device
    work = tensor
    if dist.get_backend() == "nccl" and device.type != "cuda":
        work = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    work = work.clone()
    dist.all_reduce(work)
    return work.to(device)


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


class SemanticMetrics:
    """Confusion-matrix semantic segmentation metrics (mmseg ``IoUMetric`` semantics).

    ``update(pred, label)`` with integer maps of equal shape ([B, H, W] or [H, W]);
    labels must be in ``[0, num_classes)`` or ``ignore_index``; predictions in
    ``[0, num_classes)``. ``compute()`` returns ``mIoU``, ``mAcc``, ``aAcc`` (floats)
    and ``IoU_per_class``, ``Acc_per_class`` (lists, NaN for excluded classes), in percent.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion: Optional[torch.Tensor] = None  # [K, K] int64, rows = GT, cols = prediction
        self._reduced = False
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._reduced = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        if pred.shape != label.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        if pred.is_floating_point() or label.is_floating_point():
            raise TypeError("pred and label must be integer label maps (argmax the logits first)")
        k = self.num_classes
        label, pred = label.reshape(-1).long(), pred.reshape(-1).to(label.device).long()
        keep = label != self.ignore_index
        label, pred = label[keep], pred[keep]
        if label.numel() == 0:
            return
        if bool(((label < 0) | (label >= k)).any()):
            raise ValueError(f"labels outside [0, {k}) that are not ignore_index={self.ignore_index}")
        if bool(((pred < 0) | (pred >= k)).any()):
            raise ValueError(f"predictions outside [0, {k})")
        counts = torch.bincount(label * k + pred, minlength=k * k).view(k, k)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def reduce(self) -> "SemanticMetrics":
        """Sum the confusion matrix over ranks (once, after the last update; no-op when not distributed)."""
        if _distributed():
            if self._reduced:
                raise RuntimeError("reduce() was already called; reset() before accumulating again")
            self.confusion = _all_reduce_sum(self.confusion)
            self._reduced = True
        return self

    def compute(self) -> Dict[str, Union[float, List[float]]]:
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        area_label, area_pred = cm.sum(1), cm.sum(0)
        union = area_label + area_pred - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        acc = torch.where(area_label > 0, tp / area_label.clamp(min=1), torch.full_like(tp, math.nan))
        total = float(cm.sum())
        return {
            "mIoU": 100.0 * _nanmean(iou),
            "mAcc": 100.0 * _nanmean(acc),
            "aAcc": 100.0 * float(tp.sum()) / total if total > 0 else math.nan,
            "IoU_per_class": (100.0 * iou).tolist(),
            "Acc_per_class": (100.0 * acc).tolist(),
        }


Segments = Union[Sequence[Mapping], Mapping[int, int]]


def _segment_table(segments: Segments) -> Dict[int, Tuple[int, bool]]:
    """``{id: (category, iscrowd)}`` from a list of dicts (``id``, ``category_id``, optional ``iscrowd``)
    or a mapping ``{id: category}``."""
    if isinstance(segments, Mapping):
        return {int(i): (int(c), False) for i, c in segments.items()}
    table = {}
    for seg in segments:
        sid = int(seg["id"])
        if sid in table:
            raise ValueError(f"segment id {sid} listed twice")
        table[sid] = (int(seg["category_id"]), bool(seg.get("iscrowd", 0)))
    return table


class PanopticQuality:
    """COCO panoptic quality (panopticapi ``pq_compute`` semantics), accumulated per category.

    :param thing_flags: one bool per contiguous category index (True: thing).
    :param ignore_label: the segment id that means void / no segment, in both the
        GT and predicted id maps (0, as panopticapi's VOID and ``zoo.postprocess``).

    ``update(pred_ids [H, W], pred_segments, gt_ids [H, W], gt_segments)``:
    integer segment id maps and their segments, each a list of dicts with ``id``,
    ``category_id`` (contiguous index) and, for GT, optional ``iscrowd``
    (``zoo.postprocess.panoptic_inference`` output works as is), or a mapping
    ``{id: category_id}``. Every non-void id in ``pred_ids`` must be listed
    (ValueError otherwise, as panopticapi); listed segments with no pixel are
    dropped. GT ids in the map that are not listed are neither matched nor void
    (as panopticapi). Crowd regions: a predicted FP segment is discounted when
    more than half of it lies on GT void plus all GT crowd segments of its
    category (panopticapi keeps one crowd segment per category; COCO has at most one).
    """

    def __init__(self, thing_flags: Sequence[bool], ignore_label: int = 0):
        self.thing_flags = torch.tensor([bool(t) for t in thing_flags], dtype=torch.bool)
        self.num_classes = len(self.thing_flags)
        self.ignore_label = ignore_label
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.tp = torch.zeros(k, dtype=torch.int64)
        self.fp = torch.zeros(k, dtype=torch.int64)
        self.fn = torch.zeros(k, dtype=torch.int64)
        self.iou_sum = torch.zeros(k, dtype=torch.float64)
        self._reduced = False

    def _categories(self, table: Dict[int, Tuple[int, bool]], ids: torch.Tensor, what: str
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        cats, crowd = [], []
        for i in ids.tolist():
            cat, is_crowd = table.get(i, (-1, False))
            if cat >= self.num_classes or (cat < 0 and i in table):
                raise ValueError(f"{what} segment {i} has category {cat} outside [0, {self.num_classes})")
            cats.append(cat)
            crowd.append(is_crowd)
        return torch.tensor(cats, dtype=torch.int64), torch.tensor(crowd, dtype=torch.bool)

    @torch.no_grad()
    def update(self, pred_ids: torch.Tensor, pred_segments: Segments, gt_ids: torch.Tensor,
               gt_segments: Segments) -> None:
        if pred_ids.shape != gt_ids.shape or pred_ids.dim() != 2:
            raise ValueError(f"pred_ids {tuple(pred_ids.shape)} and gt_ids {tuple(gt_ids.shape)} must be "
                             "[H, W] maps of the same shape")
        pred_table, gt_table = _segment_table(pred_segments), _segment_table(gt_segments)
        pred_table.pop(self.ignore_label, None)
        gt_table.pop(self.ignore_label, None)
        gt_flat = gt_ids.reshape(-1).long()
        pred_flat = pred_ids.reshape(-1).to(gt_flat.device).long()
        gt_uid, gt_inv = torch.unique(gt_flat, return_inverse=True)
        pred_uid, pred_inv = torch.unique(pred_flat, return_inverse=True)
        n_gt, n_pred = gt_uid.numel(), pred_uid.numel()
        inter = torch.bincount(gt_inv * n_pred + pred_inv, minlength=n_gt * n_pred).view(n_gt, n_pred)
        inter = inter.cpu().double()
        gt_uid, pred_uid = gt_uid.cpu(), pred_uid.cpu()

        gt_void = gt_uid == self.ignore_label
        pred_void = pred_uid == self.ignore_label
        unknown = [int(i) for i, v in zip(pred_uid.tolist(), pred_void.tolist()) if not v and i not in pred_table]
        if unknown:
            raise ValueError(f"predicted segment ids {unknown} are in the map but not in pred_segments")
        gt_cat, gt_crowd = self._categories(gt_table, gt_uid, "GT")
        pred_cat, _ = self._categories(pred_table, pred_uid, "predicted")
        gt_known = gt_cat >= 0            # listed, non-void GT segments (crowd included)
        pred_real = ~pred_void

        gt_area, pred_area = inter.sum(1), inter.sum(0)
        void_inter = inter[gt_void].sum(0)  # [n_pred] pixels of each prediction on GT void
        union = pred_area[None, :] + gt_area[:, None] - inter - void_inter[None, :]
        iou = inter / union.clamp(min=1)
        candidate = ((gt_known & ~gt_crowd)[:, None] & pred_real[None, :]
                     & (gt_cat[:, None] == pred_cat[None, :]) & (inter > 0) & (iou > 0.5))
        gt_idx, pred_idx = candidate.nonzero(as_tuple=True)
        k = self.num_classes
        matched_cat = gt_cat[gt_idx]
        self.tp += torch.bincount(matched_cat, minlength=k)
        self.iou_sum += torch.bincount(matched_cat, weights=iou[gt_idx, pred_idx], minlength=k)

        gt_matched = candidate.any(1)
        fn = gt_known & ~gt_crowd & ~gt_matched
        self.fn += torch.bincount(gt_cat[fn], minlength=k)

        crowd_of_cat = gt_crowd[:, None] & (gt_cat[:, None] == pred_cat[None, :])
        discounted = void_inter + (inter * crowd_of_cat).sum(0)
        fp = pred_real & ~candidate.any(0) & ~(discounted / pred_area.clamp(min=1) > 0.5)
        self.fp += torch.bincount(pred_cat[fp], minlength=k)

    def reduce(self) -> "PanopticQuality":
        """Sum the per-category statistics over ranks (once, after the last update)."""
        if _distributed():
            if self._reduced:
                raise RuntimeError("reduce() was already called; reset() before accumulating again")
            counts = _all_reduce_sum(torch.stack([self.tp, self.fp, self.fn]))
            self.tp, self.fp, self.fn = counts[0].clone(), counts[1].clone(), counts[2].clone()
            self.iou_sum = _all_reduce_sum(self.iou_sum)
            self._reduced = True
        return self

    def compute(self) -> Dict[str, Union[float, int, List[float]]]:
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        present = (tp + fp + fn) > 0
        denom = (tp + 0.5 * fp + 0.5 * fn).clamp(min=1e-12)
        nan = torch.full_like(tp, math.nan)
        pq = torch.where(present, self.iou_sum / denom, nan)
        sq = torch.where(present, torch.where(tp > 0, self.iou_sum / tp.clamp(min=1), torch.zeros_like(tp)), nan)
        rq = torch.where(present, tp / denom, nan)
        results: Dict[str, Union[float, int, List[float]]] = {}
        for suffix, select in (("", torch.ones_like(present)), ("_th", self.thing_flags),
                               ("_st", ~self.thing_flags)):
            use = present & select
            count = int(use.sum())
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                results[name + suffix] = 100.0 * float(values[use].mean()) if count else math.nan
            results["N" + suffix] = count
        results["PQ_per_class"] = (100.0 * pq).tolist()
        results["SQ_per_class"] = (100.0 * sq).tolist()
        results["RQ_per_class"] = (100.0 * rq).tolist()
        return results
