"""Hungarian matcher: GT conversion, cost terms written out pixel by pixel, optimality by brute force."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from recipes.matcher import HungarianMatcher, semantic_to_targets


def test_semantic_to_targets():
    label = torch.tensor([[3, 3, 255], [0, 7, 7], [255, 0, 3]])
    labels, masks = semantic_to_targets(label)
    assert labels.tolist() == [0, 3, 7] and labels.dtype == torch.int64
    assert masks.dtype == torch.bool and masks.shape == (3, 3, 3)
    for c, m in zip(labels.tolist(), masks):
        assert torch.equal(m, label == c)
    assert not masks.any(0)[label == 255].any()
    labels, masks = semantic_to_targets(torch.full((2, 4), 255))
    assert labels.shape == (0,) and masks.shape == (0, 2, 4)


def _reference_cost(cls, mask_logits, labels, masks, alpha=0.25, gamma=2.0):
    """cost[q, n] with explicit pixel loops (class + 20 focal + dice), GT nearest-downsampled by index."""
    Q = cls.shape[0]
    h, w = mask_logits.shape[-2:]
    H, W = masks.shape[-2:]
    cost = torch.zeros(Q, len(labels), dtype=torch.float64)
    for q in range(Q):
        probs = torch.softmax(cls[q].double(), -1)
        for n in range(len(labels)):
            focal, inter, psum, gsum = 0.0, 0.0, 0.0, 0.0
            for i in range(h):
                for j in range(w):
                    # nearest: source index floor(i * H / h)
                    g = float(masks[n, (i * H) // h, (j * W) // w])
                    p = 1 / (1 + math.exp(-float(mask_logits[q, i, j])))
                    if g:
                        focal += -math.log(p + 1e-12) * alpha * (1 - p) ** gamma
                    else:
                        focal += -math.log(1 - p + 1e-12) * (1 - alpha) * p ** gamma
                    inter += p * g
                    psum += p
                    gsum += g
            dice = 1 - (2 * inter + 1) / (psum + gsum + 1)
            cost[q, n] = -probs[labels[n]] + 20 * focal / (h * w) + dice
    return cost


def test_cost_matrix_against_pixel_loops():
    gen = torch.Generator().manual_seed(1)
    cls = torch.randn(4, 6, generator=gen)
    mask_logits = torch.randn(4, 3, 5, generator=gen) * 3
    label = torch.randint(0, 5, (6, 10), generator=gen)
    labels, masks = semantic_to_targets(label)
    got = HungarianMatcher().cost_matrix(cls, mask_logits, labels, masks)
    torch.testing.assert_close(got.double(), _reference_cost(cls, mask_logits, labels, masks), rtol=1e-5,
                               atol=1e-5)


def _brute_force_min(cost):
    Q, N = len(cost), len(cost[0])
    if N <= Q:  # every target gets a distinct query
        return min(sum(cost[p[n]][n] for n in range(N)) for p in itertools.permutations(range(Q), N))
    return min(sum(cost[q][p[q]] for q in range(Q)) for p in itertools.permutations(range(N), Q))


@pytest.mark.parametrize("seed", range(12))
def test_assignment_is_optimal(seed):
    gen = torch.Generator().manual_seed(seed)
    B, Q, K = 3, int(torch.randint(1, 6, (1,), generator=gen)), 6
    h, w = 4, 6
    cls = torch.randn(B, Q, K + 1, generator=gen) * 2
    mask_logits = torch.randn(B, Q, h, w, generator=gen) * 3
    targets = []
    for b in range(B):
        n = int(torch.randint(0, 5, (1,), generator=gen))
        labels = torch.randperm(K, generator=gen)[:n]
        masks = torch.rand(n, 2 * h, 2 * w, generator=gen) > 0.5
        targets.append((labels, masks))
    matcher = HungarianMatcher()
    indices = matcher(cls, mask_logits, targets)
    assert len(indices) == B
    for b, ((qi, ti), (labels, masks)) in enumerate(zip(indices, targets)):
        n = len(labels)
        assert qi.dtype == torch.int64 and ti.dtype == torch.int64
        assert len(qi) == len(ti) == min(Q, n)
        assert len(set(qi.tolist())) == len(qi) and len(set(ti.tolist())) == len(ti)  # one-to-one
        assert qi.tolist() == sorted(qi.tolist())
        if n == 0:
            continue
        cost = matcher.cost_matrix(cls[b], mask_logits[b], labels, masks).double()
        got = float(cost[qi, ti].sum())
        assert got == pytest.approx(float(_brute_force_min(cost.tolist())), rel=1e-9, abs=1e-9)


def test_obvious_matching_and_empty_targets():
    # query q predicts class 2-q with a mask equal to target (class 2-q)
    K, H, W = 3, 4, 4
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, :2], masks[1, 2:, :2], masks[2, 2:, 2:] = True, True, True
    labels = torch.tensor([0, 1, 2])
    cls = torch.full((1, 5, K + 1), -5.0)
    mask_logits = torch.full((1, 5, H // 2, W // 2), -8.0)
    for t, q in ((0, 4), (1, 0), (2, 2)):
        cls[0, q, labels[t]] = 5.0
        mask_logits[0, q] = F.interpolate(masks[t][None, None].float(), size=(2, 2))[0, 0] * 16 - 8
    qi, ti = HungarianMatcher()(cls, mask_logits, [(labels, masks)])[0]
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 4, 1: 0, 2: 2}
    empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, H, W, dtype=torch.bool))
    qi, ti = HungarianMatcher()(cls, mask_logits, [empty])[0]
    assert qi.numel() == 0 and ti.numel() == 0


def test_valid_map_removes_ignored_pixels_from_mask_costs():
    gen = torch.Generator().manual_seed(3)
    cls = torch.randn(3, 4, generator=gen)
    mask_logits = torch.randn(3, 4, 4, generator=gen)
    label = torch.randint(0, 3, (4, 4), generator=gen)
    label[0] = 255
    labels, masks = semantic_to_targets(label)
    valid = label != 255
    m = HungarianMatcher()
    got = m.cost_matrix(cls, mask_logits, labels, masks, valid)
    # reference: focal summed over valid pixels only (divided by all h*w), dice on valid pixels only
    p = mask_logits.sigmoid().flatten(1).double()
    g = masks.flatten(1).double()
    v = valid.flatten().double()
    pos = -(p + 1e-12).log() * 0.25 * (1 - p) ** 2
    neg = -(1 - p + 1e-12).log() * 0.75 * p ** 2
    focal = ((pos[:, None] * g[None] + neg[:, None] * (1 - g[None])) * v).sum(-1) / 16
    pv = p * v
    dice = 1 - (2 * (pv[:, None] * g[None]).sum(-1) + 1) / (pv.sum(-1)[:, None] + g.sum(-1)[None] + 1)
    ref = -cls.double().softmax(-1)[:, labels] + 20 * focal + dice
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
