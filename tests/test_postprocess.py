"""Semantic and panoptic inference rules against hand-made cases and brute force."""
import torch

from zoo.postprocess import panoptic_inference, resize_masks, semantic_inference, semantic_labels


def test_semantic_inference_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(2, 4, 6, generator=gen)  # B, Q, K+1
    masks = torch.randn(2, 4, 3, 5, generator=gen)
    got = semantic_inference(cls, masks)
    assert got.shape == (2, 5, 3, 5)
    for b in range(2):
        for c in range(5):
            expected = sum(torch.softmax(cls[b, q], -1)[c] * torch.sigmoid(masks[b, q]) for q in range(4))
            torch.testing.assert_close(got[b, c], expected)


def test_resize_masks_crops_the_padding():
    masks = torch.arange(16.0).view(1, 1, 4, 4)
    out = resize_masks(masks, (8, 8), (5, 7))
    assert out.shape == (1, 1, 5, 7)
    full = torch.nn.functional.interpolate(masks, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(out, full[..., :5, :7])


def _logits_for(class_index, num_classes, confidence=8.0):
    row = torch.zeros(num_classes + 1)
    row[class_index] = confidence
    return row


def test_panoptic_rules():
    K = 3  # classes 0, 1 are things; 2 is stuff
    things = (True, True, False)
    inside, outside = 6.0, -6.0
    masks = torch.full((6, 4, 4), outside)
    masks[0, :2, :2] = inside                 # thing class 0, top-left
    masks[1, :2, 2:] = inside                 # thing class 1, top-right
    masks[2, 2:, :2] = inside                 # stuff class 2 ...
    masks[3, 2:, 2:] = inside                 # ... and more of it: merges with query 2
    masks[4, :, :] = inside                   # confident no-object: dropped
    masks[5, :2, :2] = inside                 # low score: dropped
    cls = torch.stack([_logits_for(0, K), _logits_for(1, K), _logits_for(2, K), _logits_for(2, K),
                       _logits_for(K, K), _logits_for(1, K, confidence=0.5)])
    ids, segments = panoptic_inference(cls, masks, things)
    assert [(s["id"], s["category_id"], s["isthing"]) for s in segments] == [(1, 0, True), (2, 1, True),
                                                                            (3, 2, False)]
    expected = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]], dtype=torch.int32)
    assert torch.equal(ids, expected)
    assert all(s["score"] > 0.8 for s in segments)


def test_panoptic_overlap_threshold_drops_occluded_queries():
    things = (True, True)
    masks = torch.full((2, 4, 4), -6.0)
    masks[0] = 6.0                             # query 0 covers everything, more confident
    masks[1, :, :3] = 6.0                      # query 1 covers 12 pixels but wins none
    cls = torch.stack([_logits_for(0, 2, 10.0), _logits_for(1, 2, 9.0)])
    ids, segments = panoptic_inference(cls, masks, things)
    assert [s["category_id"] for s in segments] == [0]
    assert torch.equal(ids, torch.ones(4, 4, dtype=torch.int32))
    none_ids, none = panoptic_inference(torch.stack([_logits_for(2, 2)]), masks[:1], things)
    assert none == [] and int(none_ids.abs().sum()) == 0


def test_semantic_labels_are_the_argmax_of_the_loop_scores():
    torch.manual_seed(4)
    cls, masks = torch.randn(2, 6, 5), 3 * torch.randn(2, 6, 9, 11)
    scores = torch.zeros(2, 4, 9, 11)
    for b in range(2):
        for q in range(6):
            scores[b] += cls[b, q].softmax(-1)[:-1, None, None] * masks[b, q].sigmoid()
    labels = semantic_labels(cls, masks)
    assert labels.shape == (2, 9, 11) and labels.dtype == torch.int64
    assert torch.equal(labels, scores.argmax(1))
