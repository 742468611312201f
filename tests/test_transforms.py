"""recipes.transforms against hand computations."""
import colorsys

import torch
from torchvision import tv_tensors

from recipes import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sample(label, image=None, **extra):
    label = torch.as_tensor(label, dtype=torch.int64)
    h, w = label.shape
    if image is None:
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    return {"image": tv_tensors.Image(image), "label": tv_tensors.Mask(label), "path": "x.png", **extra}


def _plain(t):
    return t.as_subclass(torch.Tensor)


def test_sizes_follow_mmseg_rules():
    assert T.short_side_size(100, 300, 64) == (64, 192)
    assert T.short_side_size(100, 300, 64, max_long=150) == (50, 150)        # long side capped
    assert T.short_side_size(300, 100, 64, max_long=1000) == (192, 64)
    assert T.keep_ratio_size(360, 480, (2048, 512)) == (512, 683)            # 512/360 binds
    assert T.keep_ratio_size(600, 300, (2048, 512)) == (1024, 512)
    assert T.keep_ratio_size(100, 2000, (2048, 512)) == (102, 2048)          # long side binds
    from recipes.config import load_recipe
    assert list(load_recipe("ade20k")["data"]["scales"]) == list(range(320, 1281, 64))
    assert list(load_recipe("cityscapes")["data"]["scales"][:3]) == [512, 614, 716]
    assert load_recipe("cityscapes")["data"]["scales"][-1] == 2048


def test_nearest_label_resize_keeps_values_and_255():
    label = torch.tensor([[0, 255, 3], [7, 7, 255]])
    s = T.RandomResize([4], max_long_side=None)(_sample(label))                # short side 2 -> 4: x2
    expected = label.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert s["image"].shape == (3, 4, 6)
    assert isinstance(s["label"], tv_tensors.Mask) and s["label"].dtype == torch.int64
    assert torch.equal(_plain(s["label"]), expected)
    big = torch.randint(0, 5, (37, 53))
    big[big == 4] = 255
    out = T.RandomResize([23], max_long_side=None)(_sample(big))["label"]
    assert out.shape == (23, 33) and set(out.unique().tolist()) <= {0, 1, 2, 3, 255}
    assert 255 in out.unique().tolist()


def test_random_resize_draws_listed_scales():
    torch.manual_seed(0)
    seen = {T.RandomResize([20, 30, 40], max_long_side=100)(_sample(torch.zeros(10, 15)))["image"].shape[-2]
            for _ in range(40)}
    assert seen == {20, 30, 40}
    sizes = [T.RandomResize((16, 32), max_long_side=40, mode="range").get_size(10, 20) for _ in range(30)]
    assert all(16 <= h <= 20 and abs(w - 2 * h) <= 1 and w <= 40 for h, w in sizes)
    assert (20, 40) in sizes and len(set(sizes)) > 2          # short side ~ U(16, 32), long side capped at 40
    h, w = T.RandomResize((50, 100), mode="long_range").get_size(10, 20)       # LSJ: long side ~ U(50, 100)
    assert 50 <= w <= 100 and abs(h - w / 2) <= 1


def test_cat_max_ratio_crop_finds_the_mixed_region():
    # class 0 everywhere except class 1 in the top-left 32x32 of 64x64; only ~36% of the 32x32
    # windows have both classes below 75%.
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[:32, :32] = 1

    def good(crop):
        frac = crop.float().mean().item()
        return 0.25 < frac < 0.75

    torch.manual_seed(0)
    with_check = [good(_plain(T.RandomCrop(32, 0.75)(_sample(label))["label"])) for _ in range(100)]
    torch.manual_seed(0)
    without = [good(_plain(T.RandomCrop(32, 1.0)(_sample(label))["label"])) for _ in range(100)]
    assert sum(with_check) >= 95                # 1 - 0.64^10 = 98.8% expected
    assert 15 <= sum(without) <= 60             # 36% expected
    crop = T.RandomCrop(32, 0.75)(_sample(torch.zeros(64, 64)))                  # no window qualifies
    assert crop["label"].shape == (32, 32)


def test_cat_max_ratio_ignores_255_and_wants_two_classes():
    crop = T.RandomCrop(10, 0.75)
    label = torch.zeros(10, 10, dtype=torch.int64)
    label[6:8] = 1          # 20 px of class 1
    label[8:] = 255         # 20 px ignored -> class 0 is 60/80 = 75% of the rest: rejected
    assert not crop._ok(label, (0, 0, 10, 10))
    label[5, :2] = 1        # 58/80 < 75%
    assert crop._ok(label, (0, 0, 10, 10))
    assert not crop._ok(torch.full((10, 10), 3), (0, 0, 10, 10))                # one class only


def test_crop_and_pad_smaller_image():
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    label = torch.randint(0, 3, (20, 30))
    s = T.RandomCrop((32, 24), 1.0)(_sample(label, image))
    assert s["image"].shape == (3, 20, 24)
    left = next(x for x in range(7) if torch.equal(_plain(s["label"]), label[:, x:x + 24]))
    assert torch.equal(_plain(s["image"]), image[:, :, left:left + 24])
    p = T.Pad((32, 24), 0.0, 255)(s)
    assert p["image"].shape == (3, 32, 24) and p["label"].shape == (32, 24)
    assert (p["label"][20:] == 255).all() and (p["image"][:, 20:] == 0).all()
    assert torch.equal(_plain(p["label"][:20]), label[:, left:left + 24])


def test_flip_moves_image_and_label_together():
    image = torch.arange(3 * 4 * 5, dtype=torch.uint8).reshape(3, 4, 5)
    label = torch.arange(20).reshape(4, 5) % 7
    masks = tv_tensors.Mask(torch.zeros(2, 4, 5, dtype=torch.bool))
    masks[0, :, 0] = True
    s = T.RandomHorizontalFlip(1.0)(_sample(label, image, masks=masks, labels=torch.tensor([3, 4])))
    assert torch.equal(_plain(s["image"]), image[:, :, [4, 3, 2, 1, 0]])
    assert torch.equal(_plain(s["label"]), label[:, [4, 3, 2, 1, 0]])
    assert s["masks"][0, :, 4].all() and not s["masks"][0, :, :4].any()
    assert s["labels"].tolist() == [3, 4]
    same = T.RandomHorizontalFlip(0.0)(_sample(label, image))
    assert torch.equal(_plain(same["image"]), image)


def test_normalisation_matches_hand_computation():
    image = torch.tensor([0, 128, 255], dtype=torch.uint8).view(3, 1, 1).expand(3, 2, 2).clone()
    out = T.Normalize(MEAN, STD)(_sample(torch.zeros(2, 2), image))["image"]
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    assert out.dtype == torch.float32 and isinstance(out, tv_tensors.Image)
    for c in range(3):
        assert torch.allclose(out[c], torch.full((2, 2), expected[c]), atol=1e-6)


def test_eval_resize_keeps_aspect_ratio_and_label():
    label = torch.randint(0, 11, (360, 480))
    tf = T.eval_transforms((2048, 512), MEAN, STD)
    s = tf(_sample(label))
    assert s["image"].shape == (3, 512, 683) and s["image"].dtype == torch.float32
    assert abs(683 / 512 - 480 / 360) < 1 / 512
    assert torch.equal(_plain(s["label"]), label)                              # evaluated at stored size
    s2 = T.eval_transforms((2048, 512), MEAN, STD, resize_targets=True)(_sample(label))
    assert s2["label"].shape == (512, 683)
    portrait = T.eval_transforms((2048, 512), MEAN, STD)(_sample(torch.zeros(600, 300)))
    assert portrait["image"].shape == (3, 1024, 512)


def test_hsv_against_colorsys():
    rgb = torch.rand(3, 5, 7)
    hsv = T.rgb_to_hsv(rgb)
    for y, x in ((0, 0), (2, 3), (4, 6)):
        assert torch.allclose(hsv[:, y, x], torch.tensor(colorsys.rgb_to_hsv(*rgb[:, y, x].tolist())), atol=1e-5)
    assert torch.allclose(T.hsv_to_rgb(hsv), rgb, atol=1e-5)


def test_photometric_distortion():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    neutral = T.PhotoMetricDistortion(0, (1.0, 1.0), (1.0, 1.0), 0)
    for _ in range(5):
        assert torch.equal(_plain(neutral(_sample(torch.zeros(8, 8), image))["image"]), image)
    grey = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8).expand(3, 8, 8).clone()
    colour_only = T.PhotoMetricDistortion(0, (1.0, 1.0), (0.5, 1.5), 18)      # no effect on grey pixels
    for _ in range(5):
        assert torch.equal(_plain(colour_only(_sample(torch.zeros(8, 8), grey))["image"]), grey)
    mid = torch.randint(40, 200, (3, 8, 8), dtype=torch.uint8)
    brightness = T.PhotoMetricDistortion(32, (1.0, 1.0), (1.0, 1.0), 0)
    shifts = set()
    for _ in range(10):
        out = _plain(brightness(_sample(torch.zeros(8, 8), mid))["image"]).int() - mid.int()
        assert out.max() - out.min() <= 1 and out.abs().max() <= 32          # one common shift
        shifts.add(int(out.float().mean().round()))
    assert 0 in shifts and len(shifts) > 2                                   # applied with p = 0.5
    full = T.PhotoMetricDistortion()
    outs = [_plain(full(_sample(torch.zeros(8, 8), image))["image"]) for _ in range(5)]
    assert all(o.dtype == torch.uint8 and o.shape == image.shape for o in outs)
    assert any(not torch.equal(o, image) for o in outs)


def test_train_pipeline_output():
    torch.manual_seed(0)
    label = torch.randint(0, 5, (50, 70))
    label[:5] = 255
    tf = T.build_transforms("ade20k", True, MEAN, STD)
    for _ in range(3):
        s = tf(_sample(label))
        assert s["image"].shape == (3, 512, 512) and s["image"].dtype == torch.float32
        assert s["label"].shape == (512, 512) and set(s["label"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    small = T.train_transforms((64, 64), [32], 64, MEAN, STD)(_sample(label))   # 32x45 padded to 64x64
    assert (small["label"][32:] == 255).all() and (small["label"][:, 45:] == 255).all()
    assert (small["image"][:, 32:] == 0).all()                               # 0 after normalisation


def test_panoptic_masks_follow_geometry_and_empty_ones_are_dropped():
    seg = torch.zeros(40, 60, dtype=torch.int64)
    seg[:, 30:] = 1
    seg[10:20, 5:15] = 2
    seg[36:, 56:] = 3                                        # a small corner segment crops often remove
    seg[0, :] = 255
    ids = torch.tensor([0, 1, 2, 3])
    masks = tv_tensors.Mask(torch.stack([seg == i for i in ids]))
    segment_ids = tv_tensors.Mask(torch.where(seg == 255, 0, seg + 100))
    tf = T.train_transforms((24, 24), [20, 30, 40], 200, MEAN, STD, cat_max_ratio=1.0)
    dropped = False
    for seed in range(20):
        torch.manual_seed(seed)
        s = tf(_sample(seg, masks=masks, labels=ids.clone(), isthing=torch.tensor([False, True, True, True]),
                       mask_ids=ids + 100, segment_ids=segment_ids))
        label, m = _plain(s["label"]), _plain(s["masks"])
        assert m.shape[1:] == label.shape == (24, 24) and m.shape[0] == len(s["labels"]) == len(s["isthing"])
        assert m.flatten(1).any(1).all()                       # no empty masks survive
        for mask, cls, mid in zip(m, s["labels"], s["mask_ids"]):
            assert (label[mask] == cls).all()                  # same geometry as the label
            assert (_plain(s["segment_ids"])[mask] == mid).all()
        assert torch.equal(m.any(0), label != 255)
        dropped |= len(s["labels"]) < 4
    assert dropped
