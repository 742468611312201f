"""SemanticMetrics and PanopticQuality against loop-based reference implementations written here."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recipes.metrics import PanopticQuality, SemanticMetrics

# ----------------------------------------------------------------------------- semantic


def _reference_semantic(preds, labels, K, ignore=255):
    """mmseg IoUMetric with a confusion matrix filled pixel by pixel."""
    cm = [[0] * K for _ in range(K)]
    for pred, label in zip(preds, labels):
        for p, g in zip(pred.flatten().tolist(), label.flatten().tolist()):
            if g == ignore:
                continue
            cm[g][p] += 1
    iou, acc = [], []
    for c in range(K):
        tp = cm[c][c]
        gt_area = sum(cm[c])
        pred_area = sum(cm[r][c] for r in range(K))
        union = gt_area + pred_area - tp
        iou.append(tp / union if union else math.nan)
        acc.append(tp / gt_area if gt_area else math.nan)
    total = sum(map(sum, cm))
    mean = lambda xs: sum(x for x in xs if not math.isnan(x)) / sum(1 for x in xs if not math.isnan(x))
    return {"mIoU": 100 * mean(iou), "mAcc": 100 * mean(acc),
            "aAcc": 100 * sum(cm[c][c] for c in range(K)) / total,
            "IoU_per_class": [100 * x for x in iou], "Acc_per_class": [100 * x for x in acc]}


def _assert_same(got, ref):
    for key in ("mIoU", "mAcc", "aAcc"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    for key in ("IoU_per_class", "Acc_per_class"):
        assert len(got[key]) == len(ref[key])
        for g, r in zip(got[key], ref[key]):
            assert (math.isnan(g) and math.isnan(r)) or g == pytest.approx(r, rel=1e-12), key


def test_semantic_metrics_against_loops():
    K = 6
    gen = torch.Generator().manual_seed(0)
    preds, labels = [], []
    metric = SemanticMetrics(K)
    for step in range(3):
        label = torch.randint(0, 4, (2, 7, 9), generator=gen)   # classes 4, 5 never in the GT
        pred = torch.randint(0, 5, (2, 7, 9), generator=gen)    # class 4 predicted, 5 never
        label[torch.rand(label.shape, generator=gen) < 0.2] = 255
        pred[label == 255] = 4   # predictions on ignored pixels must not count
        metric.update(pred, label)
        preds.append(pred)
        labels.append(label)
    got = metric.compute()
    ref = _reference_semantic(preds, labels, K)
    _assert_same(got, ref)
    assert math.isnan(got["IoU_per_class"][5]) and math.isnan(got["Acc_per_class"][5])  # absent everywhere
    assert got["IoU_per_class"][4] == 0.0 and math.isnan(got["Acc_per_class"][4])     # predicted, not in GT
    # the mean over 5 classes (4 counts as 0), not 6
    assert got["mIoU"] == pytest.approx(sum(got["IoU_per_class"][:5]) / 5)


def test_semantic_metrics_hand_case_and_checks():
    metric = SemanticMetrics(3)
    label = torch.tensor([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 0]])
    metric.update(pred, label)  # [H, W] works too
    out = metric.compute()
    # (the prediction 2 on the ignored pixel does not count)
    # class 0: tp 1, gt 2, pred 3 -> IoU 1/4, Acc 1/2; class 1: tp 2, gt 3, pred 3 -> 2/4, 2/3;
    # class 2: tp 1, gt 2, pred 1 -> 1/2, 1/2; aAcc 4/7
    assert out["IoU_per_class"] == pytest.approx([25, 50, 50])
    assert out["Acc_per_class"] == pytest.approx([50, 200 / 3, 50])
    assert out["aAcc"] == pytest.approx(400 / 7)
    with pytest.raises(ValueError):
        metric.update(pred, torch.tensor([[0, 0, 1, 3], [1, 1, 2, 2]]))  # 3 is neither a class nor 255
    with pytest.raises(ValueError):
        metric.update(pred[:1], label)
    metric.reset()
    assert math.isnan(metric.compute()["mIoU"])


# ----------------------------------------------------------------------------- panoptic


def _reference_pq(images, thing_flags, void=0):
    """panopticapi pq_compute rules with dicts and loops over pixels and segment pairs."""
    K = len(thing_flags)
    stats = {c: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0} for c in range(K)}
    for pred_ids, pred_segs, gt_ids, gt_segs in images:
        if isinstance(pred_segs, dict):
            pred_segs = [{"id": i, "category_id": c} for i, c in pred_segs.items()]
        pred_info = {s["id"]: {"cat": s["category_id"], "area": 0} for s in pred_segs}
        gt_info = {s["id"]: {"cat": s["category_id"], "area": 0, "crowd": s.get("iscrowd", 0)} for s in gt_segs}
        pairs = {}
        for p, g in zip(pred_ids.flatten().tolist(), gt_ids.flatten().tolist()):
            pairs[(g, p)] = pairs.get((g, p), 0) + 1
            if p in pred_info:
                pred_info[p]["area"] += 1
            if g in gt_info:
                gt_info[g]["area"] += 1
        pred_info = {k: v for k, v in pred_info.items() if v["area"] > 0}
        gt_info = {k: v for k, v in gt_info.items() if v["area"] > 0}
        gt_matched, pred_matched = set(), set()
        for g, gi in gt_info.items():
            for p, pi in pred_info.items():
                inter = pairs.get((g, p), 0)
                if gi["crowd"] or gi["cat"] != pi["cat"] or inter == 0:
                    continue
                union = pi["area"] + gi["area"] - inter - pairs.get((void, p), 0)
                iou = inter / union
                if iou > 0.5:
                    stats[gi["cat"]]["tp"] += 1
                    stats[gi["cat"]]["iou"] += iou
                    gt_matched.add(g)
                    pred_matched.add(p)
        crowd = {}
        for g, gi in gt_info.items():
            if g in gt_matched:
                continue
            if gi["crowd"]:
                crowd.setdefault(gi["cat"], []).append(g)
                continue
            stats[gi["cat"]]["fn"] += 1
        for p, pi in pred_info.items():
            if p in pred_matched:
                continue
            ignored = pairs.get((void, p), 0) + sum(pairs.get((g, p), 0) for g in crowd.get(pi["cat"], []))
            if ignored / pi["area"] > 0.5:
                continue
            stats[pi["cat"]]["fp"] += 1
    per = {}
    for c, s in stats.items():
        if s["tp"] + s["fp"] + s["fn"] == 0:
            continue
        d = s["tp"] + 0.5 * s["fp"] + 0.5 * s["fn"]
        per[c] = (100 * s["iou"] / d, 100 * (s["iou"] / s["tp"] if s["tp"] else 0.0), 100 * s["tp"] / d)
    out = {}
    for suffix, keep in (("", lambda c: True), ("_th", lambda c: thing_flags[c]),
                         ("_st", lambda c: not thing_flags[c])):
        cs = [c for c in per if keep(c)]
        for i, name in enumerate(("PQ", "SQ", "RQ")):
            out[name + suffix] = sum(per[c][i] for c in cs) / len(cs) if cs else math.nan
        out["N" + suffix] = len(cs)
    return out, per, stats


def _check_pq(metric, images, thing_flags):
    got = metric.compute()
    ref, per, stats = _reference_pq(images, thing_flags)
    for key, value in ref.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    for c in range(len(thing_flags)):
        assert int(metric.tp[c]) == stats[c]["tp"] and int(metric.fp[c]) == stats[c]["fp"]
        assert int(metric.fn[c]) == stats[c]["fn"]
        if c in per:
            assert got["PQ_per_class"][c] == pytest.approx(per[c][0], rel=1e-12, abs=1e-12)
            assert got["SQ_per_class"][c] == pytest.approx(per[c][1], rel=1e-12, abs=1e-12)
            assert got["RQ_per_class"][c] == pytest.approx(per[c][2], rel=1e-12, abs=1e-12)
        else:
            assert math.isnan(got["PQ_per_class"][c])
    return got


def _hand_images():
    """Categories 0, 1: things; 2, 3: stuff; 4: a thing never present. 10 x 10 maps, id 0 = void."""
    images = []
    # image 1
    gt = torch.zeros(10, 10, dtype=torch.int64)
    pred = torch.zeros(10, 10, dtype=torch.int64)
    gt[0:2, 0:2] = 1        # thing 0, 4 px; pred 11 (2 px inside it): IoU 2 / 4 = 0.5 exactly -> no match
    pred[0:2, 0:1] = 11     #   -> gt 1 is an FN, pred 11 an FP
    gt[0:10, 5:10] = 2      # stuff 2, 50 px; pred 12: 26 px inside it -> IoU 0.52 -> match
    pred[0:5, 5:10] = 12
    pred[5, 5] = 12
    gt[2:4, 0:4] = 3        # thing 1, 8 px; pred 13 = it + 4 px of GT void: union 12 + 8 - 8 - 4 -> IoU 1
    pred[2:4, 0:4] = 13
    pred[4, 0:4] = 13
    gt[9, 0:3] = 4          # stuff 3, 5 px
    gt[6, 2:4] = 4
    pred[7:10, 0:3] = 14    # thing 1, 9 px, 6 on GT void (> half): unmatched but not an FP
    pred[6, 0:4] = 15       # stuff 3, 4 px: 2 on gt 4 (IoU 2 / (4 + 5 - 2 - 2) = 0.4), 2 on void
    #                         (exactly half, not more) -> an FP; gt 4 is an FN
    gt_segs = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 2}, {"id": 3, "category_id": 1},
               {"id": 4, "category_id": 3}]
    pred_segs = [{"id": 11, "category_id": 0}, {"id": 12, "category_id": 2}, {"id": 13, "category_id": 1},
                 {"id": 14, "category_id": 1}, {"id": 15, "category_id": 3},
                 {"id": 99, "category_id": 0}]  # listed but absent from the map: dropped
    images.append((pred, pred_segs, gt, gt_segs))
    # image 2 (no void in the GT): a crowd region, a just-above match, category mismatches
    gt = torch.zeros(10, 10, dtype=torch.int64)
    pred = torch.zeros(10, 10, dtype=torch.int64)
    gt[0:5, 0:10] = 7       # thing 0, 50 px; pred 21: 26 px inside it -> IoU 0.52 -> match
    pred[0:3, 0:8] = 21
    pred[3, 0:2] = 21
    gt[5:10, 0:5] = 8       # crowd of thing 0
    pred[5:10, 0:3] = 22    # thing 0 entirely on the crowd of its category: not an FP
    gt[5:10, 5:10] = 9      # stuff 2, 25 px: no prediction of its category -> FN
    pred[5:10, 5:7] = 23    # thing 0 on gt 9 (stuff 2): FP
    pred[5:10, 7:10] = 24   # stuff 3 on gt 9: FP
    gt_segs = [{"id": 7, "category_id": 0}, {"id": 8, "category_id": 0, "iscrowd": 1},
               {"id": 9, "category_id": 2}]
    pred_segs = {21: 0, 22: 0, 23: 0, 24: 3}
    images.append((pred, pred_segs, gt, gt_segs))
    return images


THINGS = (True, True, False, False, True)


def test_panoptic_quality_hand_cases():
    images = _hand_images()
    metric = PanopticQuality(THINGS)
    for image in images:
        metric.update(*image)
    got = _check_pq(metric, images, THINGS)
    # the expectations derived by hand in _hand_images
    assert metric.tp.tolist() == [1, 1, 1, 0, 0]
    assert metric.fp.tolist() == [2, 0, 0, 2, 0]
    assert metric.fn.tolist() == [1, 0, 1, 1, 0]
    assert metric.iou_sum.tolist() == pytest.approx([0.52, 1.0, 0.52, 0.0, 0.0])
    assert got["N"] == 4 and got["N_th"] == 2 and got["N_st"] == 2
    assert math.isnan(got["PQ_per_class"][4])
    # thing 0: PQ = 0.52 / (1 + 2 / 2 + 1 / 2), SQ 0.52, RQ 1 / 2.5
    assert got["PQ_per_class"][0] == pytest.approx(100 * 0.52 / 2.5)
    assert got["SQ_per_class"][0] == pytest.approx(52.0)
    assert got["RQ_per_class"][0] == pytest.approx(40.0)
    assert got["PQ_per_class"][3] == 0.0 and got["SQ_per_class"][3] == 0.0
    assert got["PQ_th"] == pytest.approx((100 * 0.52 / 2.5 + 100) / 2)


def test_iou_exactly_half_does_not_match():
    gt = torch.tensor([[1, 1, 1, 1]])
    pred = torch.tensor([[5, 5, 6, 6]])
    metric = PanopticQuality((True,))
    metric.update(pred, {5: 0, 6: 0}, gt, {1: 0})
    assert metric.tp.tolist() == [0] and metric.fn.tolist() == [1] and metric.fp.tolist() == [2]
    metric.reset()
    metric.update(torch.tensor([[5, 5, 5, 6, 6]]), {5: 0, 6: 0}, torch.tensor([[1, 1, 1, 1, 1]]), {1: 0})
    assert metric.tp.tolist() == [1] and float(metric.iou_sum[0]) == pytest.approx(0.6)


def _random_image(gen, K, size=12):
    """Blocky random GT; the prediction is the GT with a random rectangle repainted, some pixels
    voided and ~70 % of the categories kept, so that IoUs spread on both sides of 0.5."""
    coarse = torch.randint(0, 6, (size // 3, size // 3), generator=gen)
    gt = coarse.repeat_interleave(3, 0).repeat_interleave(3, 1)
    pred = gt.clone()
    top, left = (int(v) for v in torch.randint(0, size - 4, (2,), generator=gen))
    hh, ww = (int(v) for v in torch.randint(2, 7, (2,), generator=gen))
    pred[top:top + hh, left:left + ww] = int(torch.randint(0, 7, (1,), generator=gen))
    pred[torch.rand(size, size, generator=gen) < 0.1] = 0
    gt_segs = [{"id": i, "category_id": int(torch.randint(0, K, (1,), generator=gen)),
                "iscrowd": int(torch.rand(1, generator=gen) < 0.15)} for i in range(1, 6)]
    pred_segs = []
    for i in range(1, 7):
        keep = i <= 5 and bool(torch.rand(1, generator=gen) < 0.7)
        category = gt_segs[i - 1]["category_id"] if keep else int(torch.randint(0, K, (1,), generator=gen))
        pred_segs.append({"id": i, "category_id": category})
    return pred, pred_segs, gt, gt_segs


def test_panoptic_quality_random_against_loops():
    K = 3
    things = (True, False, True)
    gen = torch.Generator().manual_seed(0)
    images = [_random_image(gen, K) for _ in range(40)]
    metric = PanopticQuality(things)
    for image in images:
        metric.update(*image)
    got = _check_pq(metric, images, things)
    assert int(metric.tp.sum()) > 0 and int(metric.fp.sum()) > 0 and int(metric.fn.sum()) > 0
    assert got["N"] == 3


def test_panoptic_quality_errors_and_ignore_label():
    metric = PanopticQuality((True, False))
    with pytest.raises(ValueError):  # id 3 in the prediction map is not listed
        metric.update(torch.tensor([[3, 1]]), {1: 0}, torch.tensor([[1, 1]]), {1: 0})
    with pytest.raises(ValueError):
        metric.update(torch.tensor([[1, 1]]), {1: 2}, torch.tensor([[1, 1]]), {1: 0})
    # a different void id (255); 0 is then an ordinary segment id
    metric = PanopticQuality((True, False), ignore_label=255)
    metric.update(torch.tensor([[0, 0, 255]]), {0: 1}, torch.tensor([[0, 0, 255]]), {0: 1})
    assert metric.tp.tolist() == [0, 1] and float(metric.iou_sum[1]) == 1.0


# ----------------------------------------------------------------------------- distributed


def _worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    sem = SemanticMetrics(3)
    sem.update(torch.tensor([[rank, 1]]), torch.tensor([[0, 1]]))
    sem.reduce()
    pq = PanopticQuality((True,))
    pq.update(torch.tensor([[1, 1, rank]]), {1: 0}, torch.tensor([[1, 1, 1]]), {1: 0})
    pq.reduce()
    if rank == 0:
        torch.save({"confusion": sem.confusion, "tp": pq.tp, "fp": pq.fp, "fn": pq.fn, "iou": pq.iou_sum},
                   result_file)
    dist.barrier()
    dist.destroy_process_group()


def test_reduce_sums_across_two_ranks(tmp_path):
    init_file, result_file = str(tmp_path / "init"), str(tmp_path / "out.pt")
    mp.spawn(_worker, args=(2, init_file, result_file), nprocs=2, join=True)
    out = torch.load(result_file)
    # rank 0 predicts [0, 1], rank 1 [1, 1] against [0, 1]
    assert out["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    # rank 0: pred [1, 1, 0(void)] -> IoU 2/3 ... void pixel is a GT pixel, so union 3: IoU 2/3; rank 1: IoU 1
    assert out["tp"].tolist() == [2] and out["fp"].tolist() == [0] and out["fn"].tolist() == [0]
    assert float(out["iou"][0]) == pytest.approx(2 / 3 + 1)
