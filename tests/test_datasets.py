"""recipes.datasets: tiny fixture folders of every layout, label remapping, error handling, real CamVid."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from recipes import datasets as D
from zoo.samples import sample_frames
import conftest

RNG = np.random.default_rng(0)
H, W = 6, 8


def _rgb(path, h=H, w=W, ext_format=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path, format=ext_format)
    return arr


def _label(path, arr, mode="L"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.asarray(arr, dtype=np.uint8)
    im = Image.fromarray(arr, "L")
    if mode == "P":
        im = im.convert("P")          # keeps the indices, adds a (grey) palette
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _map(*values):
    """H x W label with the given values cycling over the pixels."""
    return np.resize(np.array(values, dtype=np.uint8), (H, W))


# ----------------------------------------------------------------------------- ADE20K
@pytest.fixture
def ade_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            _rgb(str(root / "images" / split / f"ADE_{split}_{i:08d}.jpg"))
            _label(str(root / "annotations" / split / f"ADE_{split}_{i:08d}.png"), _map(0, 1, 2, 150, 255))
    return root


def test_ade20k_lengths_and_zero_label_shift(ade_root):
    ds = D.ADE20KDataset(str(ade_root), "train")
    assert len(ds) == 3 and len(D.ADE20KDataset(str(ade_root), "validation")) == 2
    assert len(D.ADE20KDataset(str(ade_root.parent), "val")) == 2          # parent folder accepted
    assert ds.num_classes == 150 and ds.ignore_index == 255 and ds.classes[0] == "wall"
    assert len(ds.palette) == 150
    s = ds[0]
    assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.uint8
    assert s["image"].shape == (3, H, W)
    assert isinstance(s["label"], tv_tensors.Mask) and s["label"].dtype == torch.int64
    expected = torch.from_numpy(np.resize(np.array([255, 0, 1, 149, 255]), (H, W)))
    assert torch.equal(s["label"].as_subclass(torch.Tensor), expected)
    assert s["path"].endswith("ADE_training_00000000.jpg") and s["ori_size"] == (H, W)


def test_ade20k_missing_folder_names_it(ade_root):
    import shutil
    shutil.rmtree(ade_root / "annotations" / "validation")
    with pytest.raises(D.DatasetLayoutError, match="annotations.validation") as err:
        D.ADE20KDataset(str(ade_root), "val")
    assert isinstance(err.value, FileNotFoundError)
    assert "images/{training,validation}" in str(err.value)       # the expected layout is shown


def test_missing_label_file_raises_or_is_skipped(ade_root, caplog):
    os.remove(ade_root / "annotations" / "training" / "ADE_training_00000001.png")
    with pytest.raises(D.BadSampleError, match="ADE_training_00000001.png"):
        D.ADE20KDataset(str(ade_root), "train")
    with caplog.at_level(logging.WARNING, logger="recipes.datasets"):
        ds = D.ADE20KDataset(str(ade_root), "train", skip_bad=True)
    assert len(ds) == 2 and "ADE_training_00000001.png" in caplog.text


def test_out_of_range_label_raises_with_values(ade_root):
    bad = ade_root / "annotations" / "training" / "ADE_training_00000002.png"
    _label(str(bad), _map(3, 151, 200))
    ds = D.ADE20KDataset(str(ade_root), "train")
    with pytest.raises(D.LabelValueError, match=r"\[151, 200\]") as err:
        ds[2]
    assert str(bad) in str(err.value) and err.value.values == [151, 200] and err.value.path == str(bad)
    ds[1]   # the others are fine


def test_corrupt_image_raises_or_is_skipped(ade_root, caplog):
    bad = ade_root / "images" / "training" / "ADE_training_00000001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ds = D.ADE20KDataset(str(ade_root), "train")
    with pytest.raises(D.BadSampleError, match="ADE_training_00000001.jpg"):
        ds[1]
    ds = D.ADE20KDataset(str(ade_root), "train", skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="recipes.datasets"):
        s = ds[1]
    assert s["path"].endswith("ADE_training_00000002.jpg")      # replaced by the next good sample
    assert "ADE_training_00000001.jpg" in caplog.text and 1 in ds.bad_indices


def test_size_mismatch_raises(ade_root):
    _label(str(ade_root / "annotations" / "training" / "ADE_training_00000000.png"), np.zeros((3, 3)))
    with pytest.raises(D.BadSampleError, match="ADE_training_00000000.png.*3x3"):
        D.ADE20KDataset(str(ade_root), "train")[0]


def test_empty_dataset_raises(tmp_path):
    for sub in ("images/training", "annotations/training"):
        (tmp_path / sub).mkdir(parents=True)
    with pytest.raises(D.EmptyDatasetError, match="no samples"):
        D.ADE20KDataset(str(tmp_path), "train")


def test_missing_root_raises(tmp_path):
    with pytest.raises(D.DatasetLayoutError, match="nowhere"):
        D.CamVidDataset(str(tmp_path / "nowhere"), "train")


# ----------------------------------------------------------------------------- Cityscapes
def test_cityscapes_trainid_table_spot_checks():
    t = D.CITYSCAPES_ID_TO_TRAINID
    assert len(t) == 34 and sorted(v for v in t.values() if v != 255) == list(range(19))
    assert (t[7], t[8], t[11], t[21], t[23], t[24], t[26], t[31], t[33]) == (0, 1, 2, 8, 10, 11, 13, 16, 18)
    assert all(t[i] == 255 for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30))


def test_cityscapes_convert_and_load(tmp_path):
    root = tmp_path / "cityscapes"
    ids = np.array([[0, 7, 8, 11, 12, 13, 17, 19],
                    [20, 21, 22, 23, 24, 25, 26, 27],
                    [28, 29, 30, 31, 32, 33, 9, 255],
                    [1, 2, 3, 4, 5, 6, 10, 14],
                    [15, 16, 18, 7, 7, 7, 7, 7],
                    [26, 26, 26, 26, 26, 26, 26, 26]], dtype=np.uint8)
    expected = np.array([[255, 0, 1, 2, 3, 4, 5, 6],
                         [7, 8, 9, 10, 11, 12, 13, 14],
                         [15, 255, 255, 16, 17, 18, 255, 255],
                         [255] * 8,
                         [255, 255, 255, 0, 0, 0, 0, 0],
                         [13] * 8])
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for k in range(2):
                stem = f"{city}_000000_{k:06d}"
                _rgb(str(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"))
                _label(str(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"), ids)
    with pytest.raises(D.DatasetLayoutError, match="cityscapes-trainids"):
        D.CityscapesDataset(str(root), "train")
    assert D.main(["cityscapes-trainids", str(root)]) == 0
    out = root / "gtFine" / "train" / "aachen" / "aachen_000000_000000_gtFine_labelTrainIds.png"
    assert np.array_equal(np.asarray(Image.open(out)), expected)
    assert D.convert_cityscapes_trainids(str(root)) == 0            # existing outputs are kept
    ds = D.CityscapesDataset(str(root), "train")
    assert len(ds) == 4 and len(D.CityscapesDataset(str(root), "val")) == 2 and ds.num_classes == 19
    s = ds[3]
    assert s["path"].endswith("bochum_000000_000001_leftImg8bit.png")
    assert np.array_equal(s["label"].numpy(), expected)


# ----------------------------------------------------------------------------- VOC
@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    names = [f"2007_{i:06d}" for i in range(5)]
    for n in names:
        _rgb(str(root / "JPEGImages" / f"{n}.jpg"))
        _label(str(root / "SegmentationClass" / f"{n}.png"), _map(0, 5, 20, 255), mode="P")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(names[:3]) + "\n")
    (sets / "val.txt").write_text("\n".join(names[3:]) + "\n")
    return root


def test_voc_lists_palette_png_and_ignore(voc_root):
    ds = D.VOCDataset(str(voc_root.parent.parent), "train")           # folder above VOCdevkit accepted
    assert len(ds) == 3 and len(D.VOCDataset(str(voc_root), "val")) == 2
    assert ds.num_classes == 21 and ds.classes[0] == "background"
    label = ds[0]["label"].numpy()
    assert np.array_equal(label, np.resize(np.array([0, 5, 20, 255]), (H, W)))   # indices, not colours


def test_voc_missing_list_and_image(voc_root):
    with pytest.raises(D.DatasetLayoutError, match=r"train_aug\.txt|SegmentationClassAug"):
        D.VOCDataset(str(voc_root), "train_aug")
    with pytest.raises(D.DatasetLayoutError, match=r"trainval\.txt"):
        D.VOCDataset(str(voc_root), "trainval")
    os.remove(voc_root / "JPEGImages" / "2007_000001.jpg")
    ds = D.VOCDataset(str(voc_root), "train")
    with pytest.raises(D.BadSampleError, match="2007_000001.jpg"):
        ds[1]


def test_voc_out_of_range(voc_root):
    _label(str(voc_root / "SegmentationClass" / "2007_000000.png"), _map(0, 21, 254, 255), mode="P")
    with pytest.raises(D.LabelValueError, match=r"\[21, 254\]"):
        D.VOCDataset(str(voc_root), "train")[0]


def test_voc_sbd_conversion_and_train_aug(voc_root, tmp_path):
    from scipy.io import savemat
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    seg = np.resize(np.array([0, 15, 7], dtype=np.uint8), (H, W))
    for n in ("2008_000001", "2008_000002"):
        savemat(str(sbd / "cls" / f"{n}.mat"), {"GTcls": {"Segmentation": seg}})
        _rgb(str(voc_root / "JPEGImages" / f"{n}.jpg"))
    (sbd / "train.txt").write_text("2008_000001\n2007_000003\n")   # 2007_000003 is in VOC val: excluded
    (sbd / "val.txt").write_text("2008_000002\n")
    D.main(["voc-sbd", str(sbd), str(voc_root)])
    listed = (voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert listed == ["2007_000000", "2007_000001", "2007_000002", "2008_000001", "2008_000002"]
    ds = D.VOCDataset(str(voc_root), "train_aug")
    assert len(ds) == 5
    assert np.array_equal(ds[4]["label"].numpy(), seg.astype(np.int64))
    assert ds.samples[4][1].endswith(os.path.join("SegmentationClassAug", "2008_000002.png"))


# ----------------------------------------------------------------------------- CamVid
@pytest.fixture
def camvid_root(tmp_path):
    root = tmp_path / "camvid"
    lines = []
    for i in range(4):
        _rgb(str(root / "train" / f"0001TP_{i:06d}.png"))
        _label(str(root / "trainannot" / f"0001TP_{i:06d}.png"), _map(0, 3, 10, 11))
        lines.append(f"train/0001TP_{i:06d}.png trainannot/0001TP_{i:06d}.png")
    (root / "train.txt").write_text("\n".join(lines[:3]) + "\n")       # the list decides: 3 of 4
    for i in range(2):
        _rgb(str(root / "val" / f"0016E5_{i:05d}.png"))
        _label(str(root / "valannot" / f"0016E5_{i:05d}.png"), _map(1, 11))
    return root


def test_camvid_void_to_255_and_lists(camvid_root):
    ds = D.CamVidDataset(str(camvid_root), "train")
    assert len(ds) == 3 and ds.num_classes == 11 and ds.ignore_index == 255
    assert np.array_equal(ds[0]["label"].numpy(), np.resize(np.array([0, 3, 10, 255]), (H, W)))
    val = D.CamVidDataset(str(camvid_root), "val")                 # no val.txt: folders paired by name
    assert len(val) == 2 and set(np.unique(val[1]["label"].numpy())) == {1, 255}


def test_camvid_segnet_absolute_list_entries(camvid_root):
    (camvid_root / "val.txt").write_text("/SegNet/CamVid/val/0016E5_00001.png /SegNet/CamVid/valannot/0016E5_00001.png\n")
    ds = D.CamVidDataset(str(camvid_root), "val")
    assert len(ds) == 1 and ds.samples[0][1] == str(camvid_root / "valannot" / "0016E5_00001.png")


def test_camvid_out_of_range_and_skip_bad(camvid_root, caplog):
    bad = camvid_root / "trainannot" / "0001TP_000000.png"
    _label(str(bad), _map(0, 12, 13))
    with pytest.raises(D.LabelValueError, match=r"0001TP_000000.png.*\[12, 13\]"):
        D.CamVidDataset(str(camvid_root), "train")[0]
    ds = D.CamVidDataset(str(camvid_root), "train", skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="recipes.datasets"):
        assert ds[0]["path"].endswith("0001TP_000001.png")
    assert "0001TP_000000.png" in caplog.text


def test_class_weights_command_prints_median_frequency_weights(tmp_path, capsys):
    from recipes.datasets.__main__ import main
    maps = [_map(0, 0, 0, 1, 11, 11), _map(0, 2, 2, 2, 2, 11)]
    for i, label in enumerate(maps):
        _rgb(str(tmp_path / "train" / f"{i}.png"))
        _label(str(tmp_path / "trainannot" / f"{i}.png"), label)
    assert main(["class-weights", "camvid", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    got = [float(v) for v in printed.strip("()").split(",")]
    # by hand: f_c = pixels of c / labelled pixels of the maps holding c (void = 11 counts nowhere)
    stacked = np.stack(maps)
    labelled = [(m != 11).sum() for m in maps]
    freq = {}
    for c in range(11):
        holding = sum(n for m, n in zip(maps, labelled) if (m == c).any())
        if holding:
            freq[c] = (stacked == c).sum() / holding
    median = sorted(freq.values())[len(freq) // 2]
    expected = [round(median / freq[c], 4) if c in freq else 0.0 for c in range(11)]
    assert got == pytest.approx(expected, abs=1e-4) and len(set(got)) > 2


@pytest.mark.skipif(not conftest.REAL_CAMVID, reason="needs the real CamVid under the data root")
def test_camvid_recipe_class_weights_are_the_train_split_s(capsys):
    from recipes.configs.camvid import CAMVID_TRAIN_MEDIAN_FREQUENCY
    from recipes.datasets.__main__ import main
    assert main(["class-weights", "camvid", str(conftest.CAMVID)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert tuple(float(v) for v in printed.strip("()").split(",")) == CAMVID_TRAIN_MEDIAN_FREQUENCY


def test_camvid_list_names_missing_file(camvid_root):
    with open(camvid_root / "train.txt", "a") as fh:
        fh.write("train/0001TP_000003.png trainannot/missing.png\n")
    with pytest.raises(D.BadSampleError, match="missing.png"):
        D.CamVidDataset(str(camvid_root), "train")
    assert len(D.CamVidDataset(str(camvid_root), "train", skip_bad=True)) == 3


# ----------------------------------------------------------------------------- COCO panoptic
def _encode(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8)


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    person, car, rug, crowd = 5 + 256 * 3 + 65536 * 1, 300, 7, 1000      # ids use all three channels
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:2, :4] = person
    ids[:2, 4:] = car
    ids[2:5] = rug
    ids[5, :3] = crowd
    for k, split in enumerate(("train2017", "val2017")):
        name = f"{k + 1:012d}"
        _rgb(str(root / split / f"{name}.jpg"))
        os.makedirs(root / f"panoptic_{split}", exist_ok=True)
        Image.fromarray(_encode(ids), "RGB").save(root / f"panoptic_{split}" / f"{name}.png")
        segs = [dict(id=person, category_id=1, iscrowd=0, area=8), dict(id=car, category_id=3, iscrowd=0, area=8),
                dict(id=rug, category_id=200, iscrowd=0, area=24), dict(id=crowd, category_id=1, iscrowd=1, area=3)]
        data = dict(images=[dict(id=k + 1, file_name=f"{name}.jpg", height=H, width=W)],
                    annotations=[dict(image_id=k + 1, file_name=f"{name}.png", segments_info=segs)],
                    categories=[])
        os.makedirs(root / "annotations", exist_ok=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
    return root, ids, (person, car, rug, crowd)


def test_coco_panoptic_decoding_and_targets(coco_root):
    root, ids, (person, car, rug, crowd) = coco_root
    assert D.rgb_to_panoptic_id(_encode(np.array([[person]])))[0, 0] == person == 5 + 3 * 256 + 65536
    ds = D.COCOPanopticDataset(str(root), "train")
    assert len(ds) == 1 and ds.num_classes == 133 and len(D.COCOPanopticDataset(str(root), "val")) == 1
    s = ds[0]
    assert np.array_equal(s["segment_ids"].numpy(), ids)
    expected = np.full((H, W), 255)
    expected[:2, :4], expected[:2, 4:], expected[2:5], expected[5, :3] = 0, 2, 132, 0   # contiguous ids
    assert np.array_equal(s["label"].numpy(), expected)
    assert s["labels"].tolist() == [0, 2, 132]                    # crowd left out of the targets
    assert s["isthing"].tolist() == [True, True, False]
    assert s["mask_ids"].tolist() == [person, car, rug]
    assert isinstance(s["masks"], tv_tensors.Mask) and s["masks"].dtype == torch.bool
    for m, i in zip(s["masks"], (person, car, rug)):
        assert np.array_equal(m.numpy(), ids == i)
    info = {d["id"]: d for d in s["segments_info"]}
    assert info[crowd]["iscrowd"] and info[crowd]["category_id"] == 0 and info[rug]["isthing"] is False
    with_crowd = D.COCOPanopticDataset(str(root), "train", include_crowd=True)[0]
    assert with_crowd["labels"].tolist() == [0, 2, 132, 0]


def test_coco_panoptic_errors(coco_root):
    root, ids, _ = coco_root
    png = root / "panoptic_train2017" / "000000000001.png"
    bad = ids.copy()
    bad[0, 0] = 4242
    Image.fromarray(_encode(bad), "RGB").save(png)
    with pytest.raises(D.LabelValueError, match=r"000000000001.png.*\[4242\]"):
        D.COCOPanopticDataset(str(root), "train")[0]
    js = root / "annotations" / "panoptic_val2017.json"
    data = json.loads(js.read_text())
    data["annotations"][0]["segments_info"][0]["category_id"] = 183   # not a panoptic category
    js.write_text(json.dumps(data))
    with pytest.raises(D.DatasetError, match="category_id 183"):
        D.COCOPanopticDataset(str(root), "val")
    os.remove(js)
    with pytest.raises(D.DatasetLayoutError, match=r"panoptic_val2017\.json"):
        D.COCOPanopticDataset(str(root), "val")


# ----------------------------------------------------------------------------- helpers
def test_build_dataset_and_collate(camvid_root):
    ds = D.build_dataset("camvid", str(camvid_root), "train")
    batch = D.collate_samples([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, H, W) and batch["label"].shape == (2, H, W)
    assert isinstance(batch["path"], list) and len(batch["path"]) == 2
    with pytest.raises(KeyError, match="unknown dataset"):
        D.build_dataset("imagenet", str(camvid_root))


# ----------------------------------------------------------------------------- CamVid (real, or the sample frames)
def test_camvid_samples(camvid_data):
    for split in ("train", "val"):
        ds = D.CamVidDataset(str(camvid_data), split)
        n = conftest.CAMVID_SPLIT_SIZES[split] if conftest.REAL_CAMVID else len(sample_frames("camvid"))
        assert len(ds) == n
        for i in (0, n - 1):
            s = ds[i]
            assert s["image"].shape == (3, 360, 480) and s["image"].dtype == torch.uint8
            assert s["label"].shape == (360, 480)
            values = set(torch.unique(s["label"]).tolist())
            assert values <= set(range(11)) | {255} and len(values - {255}) >= 2
