"""zoo.datasets_meta: class names and palettes against published values."""
import pytest

from zoo import datasets_meta as dm

LISTS = {
    "ade20k": (dm.ADE20K_CLASSES, dm.ADE20K_PALETTE, 150),
    "cityscapes": (dm.CITYSCAPES_CLASSES, dm.CITYSCAPES_PALETTE, 19),
    "voc2012": (dm.VOC_CLASSES, dm.VOC_PALETTE, 21),
    "coco_panoptic": (dm.COCO_PANOPTIC_CLASSES, dm.COCO_PANOPTIC_PALETTE, 133),
    "camvid": (dm.CAMVID_CLASSES, dm.CAMVID_PALETTE, 11),
}


@pytest.mark.parametrize("key", sorted(LISTS))
def test_lengths_unique_names_and_valid_palette(key):
    classes, palette, n = LISTS[key]
    assert isinstance(classes, tuple) and isinstance(palette, tuple)
    assert len(classes) == n and len(palette) == n
    assert len(set(classes)) == n, "duplicate class names"
    assert all(isinstance(c, str) and c and c == c.strip() for c in classes)
    for rgb in palette:
        assert isinstance(rgb, tuple) and len(rgb) == 3
        assert all(type(v) is int and 0 <= v <= 255 for v in rgb)


@pytest.mark.parametrize("key", sorted(LISTS))
def test_registry_matches_module_constants(key):
    classes, palette, n = LISTS[key]
    meta = dm.get_dataset_meta(key)
    assert meta is dm.DATASETS[key]
    assert meta.name == key and meta.classes == classes and meta.palette == palette
    assert meta.num_classes == n
    expected_ignore = 11 if key == "camvid" else 255
    assert meta.ignore_index == expected_ignore
    if key == "coco_panoptic":
        assert meta.thing_flags == dm.COCO_PANOPTIC_THING_FLAGS and len(meta.thing_flags) == n
    else:
        assert meta.thing_flags is None


def test_registry_keys_and_unknown_name():
    assert set(dm.DATASETS) == {"ade20k", "cityscapes", "voc2012", "coco_panoptic", "camvid"}
    with pytest.raises(KeyError, match="unknown dataset"):
        dm.get_dataset_meta("imagenet")


def test_ade20k_spot_checks():
    c, p = dm.ADE20K_CLASSES, dm.ADE20K_PALETTE
    assert c[:5] == ("wall", "building", "sky", "floor", "tree")
    assert c[-3:] == ("glass", "clock", "flag")
    assert (c[0], p[0]) == ("wall", (120, 120, 120))
    assert (c[7], p[7]) == ("bed", (204, 5, 255))
    assert (c[12], p[12]) == ("person", (150, 5, 61))
    assert (c[20], p[20]) == ("car", (0, 102, 200))
    assert (c[149], p[149]) == ("flag", (92, 0, 255))
    # published quirk: road and skyscraper share a colour
    assert p[c.index("road")] == p[c.index("skyscraper")] == (140, 140, 140)


def test_cityscapes_spot_checks():
    c, p = dm.CITYSCAPES_CLASSES, dm.CITYSCAPES_PALETTE
    assert c == ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                 "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                 "truck", "bus", "train", "motorcycle", "bicycle")
    assert p[c.index("road")] == (128, 64, 128)
    assert p[c.index("car")] == (0, 0, 142)
    assert p[c.index("person")] == (220, 20, 60)
    assert p[c.index("sky")] == (70, 130, 180)
    assert p[c.index("bicycle")] == (119, 11, 32)


def _voc_colormap(n):
    """Independent re-derivation of the VOC devkit's bit-interleaved colour map."""
    cmap = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        cmap.append((r, g, b))
    return tuple(cmap)


def test_voc_spot_checks_and_colormap():
    c, p = dm.VOC_CLASSES, dm.VOC_PALETTE
    assert c[0] == "background" and c[15] == "person" and c[20] == "tvmonitor"
    assert p[0] == (0, 0, 0)
    assert p[1] == (128, 0, 0)
    assert p[15] == (192, 128, 128)
    assert p == _voc_colormap(21)


def test_coco_panoptic_structure():
    cats = dm.COCO_PANOPTIC_CATEGORIES
    assert len(cats) == 133
    assert all(isinstance(x, dm.CocoPanopticCategory) for x in cats)
    flags = [x.isthing for x in cats]
    assert set(flags) == {0, 1}
    assert sum(flags) == 80 and flags.count(0) == 53
    assert flags == [1] * 80 + [0] * 53, "things must come first, then stuff"
    ids = [x.id for x in cats]
    assert len(set(ids)) == 133
    assert all(type(i) is int and 1 <= i <= 200 for i in ids)
    assert ids == sorted(ids)
    assert max(x.id for x in cats if x.isthing) == 90
    assert min(x.id for x in cats if not x.isthing) == 92
    assert dm.COCO_PANOPTIC_CLASSES == tuple(x.name for x in cats)
    assert dm.COCO_PANOPTIC_PALETTE == tuple(x.color for x in cats)
    assert dm.COCO_PANOPTIC_THING_FLAGS == tuple(bool(f) for f in flags)
    assert dm.COCO_PANOPTIC_IDS == tuple(ids)


def test_coco_panoptic_spot_checks():
    by_name = {x.name: x for x in dm.COCO_PANOPTIC_CATEGORIES}
    assert tuple(dm.COCO_PANOPTIC_CATEGORIES[0]) == (1, "person", 1, (220, 20, 60))
    assert tuple(by_name["car"]) == (3, "car", 1, (0, 0, 142))
    assert tuple(by_name["toothbrush"]) == (90, "toothbrush", 1, (191, 162, 208))
    assert tuple(dm.COCO_PANOPTIC_CATEGORIES[80]) == (92, "banner", 0, (255, 255, 128))
    assert tuple(by_name["wall-other-merged"]) == (199, "wall-other-merged", 0, (102, 102, 156))
    assert tuple(dm.COCO_PANOPTIC_CATEGORIES[-1]) == (200, "rug-merged", 0, (250, 141, 255))
    assert dm.COCO_PANOPTIC_CLASSES.index("wall-other-merged") == 131
    # COCO ids absent from the panoptic things (unused detection ids)
    assert {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}.isdisjoint(dm.COCO_PANOPTIC_IDS)


def test_camvid_matches_dataset_readme():
    c, p = dm.CAMVID_CLASSES, dm.CAMVID_PALETTE
    assert c == ("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol",
                 "fence", "car", "pedestrian", "bicyclist")
    assert p == ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128),
                 (60, 40, 222), (128, 128, 0), (192, 128, 128), (64, 64, 128),
                 (64, 0, 128), (64, 64, 0), (0, 128, 192))
    assert dm.CAMVID_VOID_INDEX == 11 == len(c)
    assert dm.CAMVID_VOID_COLOR == (0, 0, 0) and dm.CAMVID_VOID_COLOR not in p
