"""Query mask patterns against a brute-force loop over images and queries."""

import csv

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

from conftest import TINY_SPIKE2FORMER
import zoo
from analysis.masks import query_mask_patterns, write_query_mask_patterns



def tiny_spike2former():
    torch.manual_seed(0)
    return zoo.create("spike2former_camvid", **TINY_SPIKE2FORMER)


@torch.no_grad()
def lively(model, probe):
    """Random weights leave the tiny model silent (constant masks, one class for every query):
    widen the BatchNorm gains and the class head, then move the no-object logit so that about
    half of the queries predict it on ``probe``."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.copy_(torch.rand(module.weight.shape, generator=gen) * 3 + 1)
            module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.5)
    head = model.sdme.class_embed
    head.weight.copy_(torch.randn(head.weight.shape, generator=gen))
    head.bias.copy_(torch.randn(head.bias.shape, generator=gen) * 2)
    logits = model.eval()(probe)["pred_logits"][-1]
    head.bias[-1] += (logits[..., :-1].amax(-1) - logits[..., -1]).median()
    return model


def brute_force(captured, size):
    """Mean masks and class votes from the model's raw outputs, one image and one query at a time.

    Spike2Former's masks are at half the padded input: the image covers the first H/2 x W/2.
    """
    queries, classes = captured[0][1]["pred_logits"].shape[-2:]
    masks = torch.zeros(queries, size, size, dtype=torch.float64)
    votes = np.zeros((queries, classes), dtype=np.int64)
    images = 0
    for (height, width), out in captured:
        for b in range(out["pred_masks"].shape[1]):
            images += 1
            for q in range(queries):
                logits = out["pred_masks"][-1, b, q, : height // 2, : width // 2]
                resized = F.interpolate(logits.sigmoid()[None, None], size=(size, size), mode="bilinear",
                                        align_corners=False)
                masks[q] += resized[0, 0].double()
                votes[q, int(out["pred_logits"][-1, b, q].argmax())] += 1
    return (masks / images).numpy(), votes, images


def capture_outputs(model):
    captured = []
    model.register_forward_hook(lambda m, inputs, out: captured.append((tuple(inputs[0].shape[-2:]), out)))
    return captured


def test_mean_masks_and_histogram_equal_brute_force():
    data = [torch.randn(2, 3, 64, 64), torch.randn(1, 3, 64, 80)]  # the second is padded to 64 x 96
    model = lively(tiny_spike2former(), data[0]).train()
    captured = capture_outputs(model)
    patterns = query_mask_patterns(model, data, progress=False)
    assert model.training
    assert all(out["pred_masks"].shape[0] == 1 for _, out in captured)  # eval mode: the last state only
    masks, votes, images = brute_force(captured, 200)
    # a test that can fail: masks vary in space and across queries, votes spread over classes and no object
    assert masks.std(axis=(1, 2)).max() > 1e-3 and np.abs(masks - masks.mean(0)).max() > 1e-3
    assert 0 < votes[:, -1].sum() < votes.sum() and (votes[:, :-1].sum(0) > 0).sum() >= 2
    assert patterns.images == images == 3
    assert patterns.mean_masks.shape == (5, 200, 200) and patterns.class_histogram.shape == (5, 12)
    np.testing.assert_allclose(patterns.mean_masks, masks, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(patterns.class_histogram, votes)
    assert patterns.class_histogram.sum(1).tolist() == [3] * 5
    assert patterns.num_classes == 11


def test_write_query_mask_patterns(tmp_path):
    model = tiny_spike2former()
    patterns = query_mask_patterns(model, [torch.randn(2, 3, 64, 64)], size=40, progress=False)
    names = model.pretrained_cfg.class_names
    paths = write_query_mask_patterns(patterns, tmp_path / "queries", class_names=names, columns=3)
    saved = np.load(paths["npz"])
    np.testing.assert_array_equal(saved["mean_masks"], patterns.mean_masks)
    np.testing.assert_array_equal(saved["class_histogram"], patterns.class_histogram)
    assert int(saved["images"]) == 2
    with paths["csv"].open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query", *names, "no_object"]
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == patterns.class_histogram.tolist()
    for kind in ("masks", "classes"):
        assert paths[f"{kind}_png"].read_bytes().startswith(b"\x89PNG")
        assert "<svg" in paths[f"{kind}_svg"].read_text()
    with pytest.raises(ValueError, match="class names"):
        write_query_mask_patterns(patterns, tmp_path / "bad", class_names=names[:3])


def test_camvid_dataset_samples_equal_plain_images(camvid_data):
    from recipes.datasets import build_dataset
    from recipes.transforms import eval_transforms
    model = lively(tiny_spike2former(), torch.randn(1, 3, 64, 64))
    cfg = model.pretrained_cfg
    dataset = build_dataset("camvid", str(camvid_data), "val",
                            transforms=eval_transforms((96, 72), cfg.mean, cfg.std))
    samples = Subset(dataset, [0, 1])
    from_dataset = query_mask_patterns(model, samples, size=50, progress=False)
    plain = [samples[i]["image"].as_subclass(torch.Tensor).clone() for i in range(2)]
    assert plain[0].shape == (3, 72, 96)  # padded to 96 x 96: the crop drops a quarter of the mask rows
    from_batch = query_mask_patterns(model, plain, size=50, progress=False)
    assert from_dataset.images == from_batch.images == 2
    assert from_dataset.mean_masks.std() > 1e-3
    np.testing.assert_allclose(from_dataset.mean_masks, from_batch.mean_masks, atol=1e-5)
    np.testing.assert_array_equal(from_dataset.class_histogram, from_batch.class_histogram)


def test_models_without_queries_are_refused():
    torch.manual_seed(0)
    model = zoo.create("spikefpn_camvid", embed_dims=(8, 16, 32, 40), backbone_heads=2, backbone_depths=(1, 1),
                       neck_channels=8)
    with pytest.raises(TypeError, match="query masks"):
        query_mask_patterns(model, [torch.randn(1, 3, 64, 64)], progress=False)
