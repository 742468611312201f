"""SetCriterion and PerPixelCrossEntropy against their formulas written out in the test."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recipes import losses as losses_module
from recipes.losses import (PerPixelCrossEntropy, SetCriterion, dice_loss, matched_mask_losses,
                            sigmoid_focal_loss)
from recipes.matcher import HungarianMatcher, semantic_to_targets


class FixedMatcher:
    """Returns given (query, target) pairs per image, and records what it was called with."""

    def __init__(self, pairs):
        self.pairs, self.calls = pairs, []

    def __call__(self, class_logits, mask_logits, targets):
        self.calls.append(targets)
        return [(torch.tensor([q for q, _ in p], dtype=torch.int64), torch.tensor([t for _, t in p],
                                                                                   dtype=torch.int64))
                for p in self.pairs]


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def _reference_layer(cls, masks, labels_list, gt_list, valid_list, pairs, K, num_matched):
    """Expected (loss_cls, loss_focal, loss_dice) of one layer; masks already at GT resolution."""
    B, Q = cls.shape[:2]
    num, den = 0.0, 0.0
    for b in range(B):
        assigned = {q: int(labels_list[b][t]) for q, t in pairs[b]}
        for q in range(Q):
            target = assigned.get(q, K)
            weight = 0.1 if target == K else 1.0
            logp = cls[b, q].double().log_softmax(-1)[target]
            num += -float(logp) * weight
            den += weight
    loss_cls = num / den
    focal_sum, dice_sum = 0.0, 0.0
    for b in range(B):
        for q, t in pairs[b]:
            H, W = gt_list[b].shape[-2:]
            inter = psum = gsum = 0.0
            for i in range(H):
                for j in range(W):
                    if not valid_list[b][i, j]:
                        continue
                    p = _sigmoid(float(masks[b][q, i, j]))
                    g = float(gt_list[b][t, i, j])
                    if g:
                        focal_sum += -0.25 * (1 - p) ** 2 * math.log(p)
                    else:
                        focal_sum += -0.75 * p ** 2 * math.log(1 - p)
                    inter += p * g
                    psum += p
                    gsum += g
            dice_sum += 1 - (2 * inter + 1) / (psum + gsum + 1)
    H, W = gt_list[0].shape[-2:]
    return loss_cls, 20 * focal_sum / (num_matched * H * W), dice_sum / num_matched


def _case(seed, L=3, B=2, Q=4, K=5, h=3, w=4, with_ignore=True):
    gen = torch.Generator().manual_seed(seed)
    cls = torch.randn(L, B, Q, K + 1, generator=gen)
    masks = torch.randn(L, B, Q, h, w, generator=gen) * 2
    label = torch.randint(0, K, (B, 2 * h, 2 * w), generator=gen)
    if with_ignore:
        label[0, :2, :3] = 255
        label[1, -1, :] = 255
    return cls, masks, label


def _upsampled(masks, size):
    return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)


def test_losses_match_formulas_with_fixed_matching():
    K = 5
    cls, masks, label = _case(0, K=K)
    L, B, Q, h, w = masks.shape
    targets = [semantic_to_targets(label[b]) for b in range(B)]
    pairs = [[(3, 0), (0, 2), (1, 1)], [(2, 0)]]
    pairs = [[(q, t) for q, t in p if t < len(targets[b][0])] for b, p in enumerate(pairs)]
    criterion = SetCriterion(K, matcher=FixedMatcher(pairs))
    out = criterion({"pred_logits": cls, "pred_masks": masks}, label)
    num_matched = sum(len(p) for p in pairs)
    valid = [label[b] != 255 for b in range(B)]
    expected_total = 0.0
    for layer in range(L):
        up = [_upsampled(masks[layer, b][None], (2 * h, 2 * w))[0] for b in range(B)]
        ref = _reference_layer(cls[layer], up, [t[0] for t in targets], [t[1] for t in targets], valid,
                               pairs, K, num_matched)
        prefix = "" if layer == L - 1 else f"d{layer}."
        for name, value in zip(("loss_cls", "loss_focal", "loss_dice"), ref):
            assert float(out[prefix + name]) == pytest.approx(value, rel=1e-5), prefix + name
            expected_total += value
    assert set(out) == {"loss"} | {f"{p}loss_{n}" for p in ("", "d0.", "d1.") for n in ("cls", "focal", "dice")}
    assert float(out["loss"]) == pytest.approx(expected_total, rel=1e-5)


def test_ignored_pixels_do_not_contribute():
    """The mask losses only see valid pixels: huge logits that only reach ignored pixels change nothing."""
    K = 4
    cls, masks, label = _case(1, L=1, K=K, h=4, w=4)
    label[:, :4, :] = 255  # the top half of the (8 x 8) label is ignored: mask rows 0..1
    matcher = HungarianMatcher()
    crit = SetCriterion(K, matcher=matcher)
    base = crit({"pred_logits": cls, "pred_masks": masks}, label)
    crazy = masks.clone()
    crazy[..., :1, :] = 30.0  # bilinear up x2: mask row 0 only reaches label rows 0..2 (<4: ignored)
    crazy[..., :1, ::2] = -30.0
    # a fixed matching, so that only the losses are compared
    pairs = [list(zip(*[t.tolist() for t in idx])) for idx in
             matcher(cls[0], masks[0], crit.prepare_targets(label, (4, 4)))]
    fixed = SetCriterion(K, matcher=FixedMatcher(pairs))
    a = fixed({"pred_logits": cls, "pred_masks": masks}, label)
    b = fixed({"pred_logits": cls, "pred_masks": crazy}, label)
    for key in ("loss_focal", "loss_dice"):
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6)
    assert float(base["loss_dice"]) == pytest.approx(float(a["loss_dice"]), rel=1e-6)
    # without ignore pixels the same change does matter (the test can fail)
    label2 = label.clone()
    label2[label2 == 255] = 0
    pairs2 = [list(zip(*[t.tolist() for t in idx])) for idx in
              matcher(cls[0], masks[0], crit.prepare_targets(label2, (4, 4)))]
    fixed2 = SetCriterion(K, matcher=FixedMatcher(pairs2))
    c = fixed2({"pred_logits": cls, "pred_masks": masks}, label2)
    d = fixed2({"pred_logits": cls, "pred_masks": crazy}, label2)
    assert abs(float(c["loss_focal"]) - float(d["loss_focal"])) > 1e-3


def test_unpadded_labels_are_padded_with_ignore():
    """A label smaller than the padded prediction (2h x 2w) equals the same label padded with 255."""
    K = 3
    cls, masks, label = _case(2, L=2, K=K, h=4, w=5)
    small = label[:, :6, :7].clone()  # the model padded 6 x 7 to 8 x 10 internally
    small[small == 0] = 1  # class 0 absent: padding must not create a class-0 target
    padded = torch.full_like(label, 255)
    padded[:, :6, :7] = small
    crit = SetCriterion(K)
    a = crit({"pred_logits": cls, "pred_masks": masks}, small)
    b = crit({"pred_logits": cls, "pred_masks": masks}, padded)
    for key in a:
        assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), key
    with pytest.raises(ValueError):
        crit({"pred_logits": cls, "pred_masks": masks}, torch.zeros(2, 9, 10, dtype=torch.int64))


def test_hungarian_default_targets_forms_and_backward():
    K = 4
    cls, masks, label = _case(3, K=K)
    cls.requires_grad_(True)
    masks.requires_grad_(True)
    crit = SetCriterion(K)
    out = crit({"pred_logits": cls, "pred_masks": masks}, label)
    out["loss"].backward()
    assert torch.isfinite(cls.grad).all() and masks.grad.abs().sum() > 0
    # same result with a list of label maps and with (labels, masks, valid) tuples
    as_list = crit({"pred_logits": cls, "pred_masks": masks}, list(label))
    tuples = [semantic_to_targets(l) + (l != 255,) for l in label]
    as_tuples = crit({"pred_logits": cls, "pred_masks": masks}, tuples)
    for key in out:
        assert float(as_list[key].detach()) == pytest.approx(float(out[key].detach()), rel=1e-6)
        assert float(as_tuples[key].detach()) == pytest.approx(float(out[key].detach()), rel=1e-6)
    # the loss equals the formula for the matching the Hungarian matcher returns
    idx = HungarianMatcher()(cls[-1].detach(), masks[-1].detach(), crit.prepare_targets(label, masks.shape[-2:]))
    pairs = [list(zip(q.tolist(), t.tolist())) for q, t in idx]
    targets = [semantic_to_targets(label[b]) for b in range(label.shape[0])]
    up = [_upsampled(masks[-1, b].detach()[None], label.shape[-2:])[0] for b in range(label.shape[0])]
    ref = _reference_layer(cls[-1].detach(), up, [t[0] for t in targets], [t[1] for t in targets],
                           [l != 255 for l in label], pairs, K, sum(len(p) for p in pairs))
    for name, value in zip(("loss_cls", "loss_focal", "loss_dice"), ref):
        assert float(out[name].detach()) == pytest.approx(value, rel=1e-5)


def test_empty_targets_and_single_prediction():
    K = 3
    cls, masks, label = _case(4, L=1, K=K)
    label[:] = 255
    crit = SetCriterion(K)
    masks.requires_grad_(True)
    out = crit({"pred_logits": cls[0], "pred_masks": masks[0]}, label)  # no L dimension
    assert set(out) == {"loss", "loss_cls", "loss_focal", "loss_dice"}
    assert float(out["loss_focal"].detach()) == 0.0 and float(out["loss_dice"].detach()) == 0.0
    # every query is "no object": CE = mean of -log p(no object)
    expected = -cls[0].log_softmax(-1)[..., K].mean()
    assert float(out["loss_cls"].detach()) == pytest.approx(float(expected), rel=1e-6)
    out["loss"].backward()


def test_num_matched_is_averaged_over_ranks(monkeypatch):
    K = 4
    cls, masks, label = _case(5, L=1, K=K)
    crit = SetCriterion(K)
    local = crit({"pred_logits": cls, "pred_masks": masks}, label)
    n_local = sum(len(semantic_to_targets(l)[0]) for l in label)

    def fake_all_reduce(t, *args, **kwargs):  # the other rank matched 3 * n_local masks
        t.mul_(4)

    monkeypatch.setattr(losses_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(losses_module.dist, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(losses_module.dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(losses_module.dist, "all_reduce", fake_all_reduce)
    dist_out = crit({"pred_logits": cls, "pred_masks": masks}, label)
    ratio = (4 * n_local / 2) / n_local
    for key in ("loss_focal", "loss_dice"):
        assert float(dist_out[key]) == pytest.approx(float(local[key]) / ratio, rel=1e-6)
    assert float(dist_out["loss_cls"]) == pytest.approx(float(local["loss_cls"]), rel=1e-6)


def test_per_pixel_cross_entropy():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 4, 6, generator=gen, requires_grad=True)
    label = torch.randint(0, 5, (2, 7, 11), generator=gen)  # padded to 8 x 12 by the model
    label[0, 0, :5] = 255
    label[1, 3:, 4:] = 255
    loss = PerPixelCrossEntropy()(logits, label)
    up = F.interpolate(logits.detach(), size=(8, 12), mode="bilinear", align_corners=False)[..., :7, :11]
    total, count = 0.0, 0
    for b in range(2):
        for i in range(7):
            for j in range(11):
                c = int(label[b, i, j])
                if c == 255:
                    continue
                total += -float(up[b, :, i, j].double().log_softmax(0)[c])
                count += 1
    assert float(loss.detach()) == pytest.approx(total / count, rel=1e-6)
    loss.backward()
    # direct resize when the label is at the padded size already (logit_stride=None)
    full = torch.randint(0, 5, (2, 8, 12), generator=gen)
    a = PerPixelCrossEntropy(logit_stride=None)(logits, full)
    b = PerPixelCrossEntropy()(logits, full)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-6)
    # class weights: the weighted mean sum w_y * CE / sum w_y over the same pixels
    weight = [0.5, 2.0, 1.0, 3.0, 0.25]
    weighted = PerPixelCrossEntropy(class_weight=weight)(logits, label)
    total, norm = 0.0, 0.0
    for b in range(2):
        for i in range(7):
            for j in range(11):
                c = int(label[b, i, j])
                if c != 255:
                    total += -weight[c] * float(up[b, :, i, j].double().log_softmax(0)[c])
                    norm += weight[c]
    assert float(weighted.detach()) == pytest.approx(total / norm, rel=1e-6)
    # all pixels ignored: zero, differentiable
    z = PerPixelCrossEntropy()(logits, torch.full((2, 8, 12), 255))
    assert float(z.detach()) == 0.0
    z.backward()


@pytest.mark.parametrize("gamma, alpha, size, compiled", [(2.0, 0.25, (24, 20), False), (1.5, 0.6, (17, 33), False),
                                                     (2.0, 0.25, (24, 20), True)])
def test_matched_mask_losses_equal_autograd_through_the_formulas(gamma, alpha, size, compiled):
    """Values and gradients of the fused path equal autograd through the element-wise definitions."""
    torch.manual_seed(3)
    M, h, w = 6, 7, 9
    logits = (3 * torch.randn(M, h, w)).requires_grad_()
    gt = torch.rand(M, *size) > 0.6
    valid = (torch.rand(*size) > 0.2).expand(M, *size)
    gt &= valid
    weights_focal, weights_dice = torch.rand(M), torch.rand(M)

    up = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    ref_focal = (sigmoid_focal_loss(up, gt.float(), alpha, gamma) * valid).sum((1, 2))
    ref_dice = dice_loss(up, gt.float(), valid.float(), eps=1.0)
    ref_grad, = torch.autograd.grad((ref_focal * weights_focal).sum() + (ref_dice * weights_dice).sum(), logits)

    focal, dice = matched_mask_losses(logits, gt, valid, alpha, gamma, eps=1.0, compiled=compiled)
    grad, = torch.autograd.grad((focal * weights_focal).sum() + (dice * weights_dice).sum(), logits)
    torch.testing.assert_close(focal, ref_focal, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dice, ref_dice, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_matched_mask_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="expected logits"):
        matched_mask_losses(torch.zeros(2, 4, 4), torch.zeros(3, 8, 8, dtype=torch.bool),
                            torch.ones(3, 8, 8, dtype=torch.bool))


def test_compiled_mask_losses_fall_back_to_eager_with_a_warning(monkeypatch, caplog):
    import recipes.losses as L

    def no_compiler(*args):
        raise RuntimeError("InductorError: no working C++ compiler")

    monkeypatch.setattr(L, "_compiled_terms", no_compiler)
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 6, requires_grad=True)
    gt, valid = torch.rand(3, 10, 12) > 0.5, torch.ones(3, 10, 12, dtype=torch.bool)
    with caplog.at_level("WARNING", logger="recipes"):
        focal, dice = L.matched_mask_losses(logits, gt, valid, compiled=True)
    assert "torch.compile of the mask losses failed" in caplog.text and "no working C++ compiler" in caplog.text
    eager = L.matched_mask_losses(logits, gt, valid, compiled=False)
    assert torch.equal(focal, eager[0]) and torch.equal(dice, eager[1])
    assert L._compiled_terms is L._mask_loss_terms        # not tried again


def test_point_losses_at_every_pixel_centre_equal_the_full_resolution_losses():
    """One point per full-resolution pixel centre: the point losses are the full-resolution ones
    (focal divided by H x W), values and gradients; the logits are sampled as the upsampling reads them."""
    from recipes.losses import point_mask_losses
    torch.manual_seed(5)
    M, h, w, H, W = 4, 6, 7, 12, 14
    logits = (3 * torch.randn(M, h, w)).requires_grad_()
    gt = torch.rand(M, H, W) > 0.5
    valid = (torch.rand(H, W) > 0.2).expand(M, H, W)
    rows, cols = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")
    points = torch.stack([rows, cols], -1).reshape(1, H * W, 2).expand(M, -1, -1)
    focal, dice = point_mask_losses(logits, gt, valid, points)
    ref_focal, ref_dice = matched_mask_losses(logits, gt, valid)
    torch.testing.assert_close(focal * H * W, ref_focal, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dice, ref_dice, rtol=1e-5, atol=1e-6)
    grad, = torch.autograd.grad((focal * H * W).sum() + dice.sum(), logits)
    ref_grad, = torch.autograd.grad(ref_focal.sum() + ref_dice.sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_uncertain_points_are_the_candidates_nearest_the_decision_boundary():
    from recipes.losses import sample_logits, sample_uncertain_points
    torch.manual_seed(0)
    logits = 4 * torch.randn(3, 10, 12)
    torch.manual_seed(1)
    points = sample_uncertain_points(logits, num_points=40, oversample_ratio=3.0, importance_sample_ratio=0.75)
    torch.manual_seed(1)
    candidates = torch.rand(3, 120, 2)  # the same draw, selected here by sorting in numpy
    assert points.shape == (3, 40, 2) and bool(((points >= 0) & (points < 1)).all())
    for m in range(3):
        magnitude = sample_logits(logits[m:m + 1], candidates[m:m + 1])[0].abs().numpy()
        expected = candidates[m][np.argsort(magnitude, kind="stable")[:30]]
        assert sorted(map(tuple, points[m, :30].tolist())) == sorted(map(tuple, expected.tolist()))


def test_point_sampled_criterion_trains_and_draws_from_the_global_rng():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    masks = torch.randn(2, 5, 8, 10, requires_grad=True)
    labels = torch.randint(0, 3, (2, 16, 20))
    criterion = SetCriterion(3, num_points=50)
    torch.manual_seed(7)
    first = criterion({"pred_logits": logits, "pred_masks": masks}, labels)
    torch.manual_seed(7)
    again = criterion({"pred_logits": logits, "pred_masks": masks}, labels)
    assert float(first["loss"].detach()) == float(again["loss"].detach())
    first["loss"].backward()
    assert masks.grad.abs().sum() > 0


# ------------------------------------------------------------------ semantic-score loss and class weights

def test_median_frequency_weights_against_counting_by_hand():
    # two maps with ignored pixels; class 3 never appears
    a = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 255]])
    b = torch.tensor([[0, 1, 1, 1], [255, 255, 255, 255]])
    # class 0: 5 + 1 = 6 pixels in maps of 7 + 4 labelled pixels; class 1: 1 + 3 = 4 of 7 + 4; class 2: 1 of 7
    freq = {0: 6 / 11, 1: 4 / 11, 2: 1 / 7}
    median = sorted(freq.values())[1]
    expected = [median / freq[0], median / freq[1], median / freq[2], 0.0]
    got = losses_module.median_frequency_weights([a, b], num_classes=4)
    assert got.tolist() == pytest.approx(expected)
    with pytest.raises(ValueError, match="0..3"):
        losses_module.median_frequency_weights([torch.tensor([4])], num_classes=4)
    with pytest.raises(ValueError, match="no labelled pixel"):
        losses_module.median_frequency_weights([torch.full((2, 2), 255)], num_classes=4)


def test_targets_to_semantic_inverts_semantic_to_targets():
    label = torch.tensor([[0, 2, 2], [255, 1, 0]])
    labels, masks = semantic_to_targets(label, 255)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    expected = label.clone()
    expected[0, 2] = 255
    assert torch.equal(losses_module.targets_to_semantic(labels, masks, valid), expected)
    empty = losses_module.targets_to_semantic(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 3, dtype=torch.bool),
                                              valid)
    assert bool((empty == 255).all())


def test_semantic_score_loss_equals_a_pixel_loop():
    torch.manual_seed(0)
    B, Q, K, h, w = 2, 3, 4, 2, 3
    cls = torch.randn(B, Q, K + 1)
    masks = torch.randn(B, Q, h, w)
    label = torch.randint(0, K, (B, h, w))
    label[0, 0, 0] = 255
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    total, norm = 0.0, 0.0
    for b in range(B):
        for y in range(h):
            for x in range(w):
                c = int(label[b, y, x])
                if c == 255:
                    continue
                scores = [sum(float(cls[b, q].softmax(0)[k]) * _sigmoid(float(masks[b, q, y, x])) for q in range(Q))
                          for k in range(K)]
                total += -float(weight[c]) * math.log(scores[c] / sum(scores))
                norm += float(weight[c])
    got = losses_module.semantic_score_loss(cls, masks, label, weight)
    assert float(got) == pytest.approx(total / norm, rel=1e-5)
    # at twice the resolution the normalised scores are upsampled bilinearly before the loss
    big = torch.randint(0, K, (B, 2 * h, 2 * w))
    scores = torch.einsum("bqc,bqhw->bchw", cls.softmax(-1)[..., :-1], masks.sigmoid())
    up = F.interpolate(scores / scores.sum(1, keepdim=True), scale_factor=2, mode="bilinear", align_corners=False)
    expected = F.nll_loss(up.log(), big)
    assert float(losses_module.semantic_score_loss(cls, masks, big)) == pytest.approx(float(expected), rel=1e-5)
    all_ignored = losses_module.semantic_score_loss(cls.requires_grad_(), masks, torch.full((B, h, w), 255))
    assert float(all_ignored) == 0.0 and all_ignored.requires_grad


def test_criterion_adds_the_weighted_semantic_loss_of_the_last_prediction():
    torch.manual_seed(1)
    L, B, Q, K, h, w = 2, 2, 4, 3, 4, 4
    cls = torch.randn(L, B, Q, K + 1, requires_grad=True)
    masks = torch.randn(L, B, Q, h, w, requires_grad=True)
    label = torch.randint(0, K, (B, 2 * h - 1, 2 * w))  # one row short: padded with ignore to 2h
    weight = [0.5, 1.0, 4.0]
    plain = SetCriterion(K)(dict(pred_logits=cls, pred_masks=masks), label)
    with_sem = SetCriterion(K, semantic_weight=2.0, semantic_class_weight=weight)(
        dict(pred_logits=cls, pred_masks=masks), label)
    padded = F.pad(label, (0, 0, 0, 1), value=255)
    expected = 2.0 * losses_module.semantic_score_loss(cls[-1], masks[-1], padded, torch.tensor(weight))
    assert float(with_sem["loss_sem"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(with_sem["loss"]) == pytest.approx(float(plain["loss"] + expected), rel=1e-6)
    assert "loss_sem" not in plain
    with_sem["loss"].backward()
    assert cls.grad[-1].abs().sum() > 0 and masks.grad[-1].abs().sum() > 0
    with pytest.raises(ValueError, match="one weight per class"):
        SetCriterion(K, semantic_weight=1.0, semantic_class_weight=[1.0, 2.0])
