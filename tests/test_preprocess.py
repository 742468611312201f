"""One preprocessing path: zoo's Preprocess (model.preprocess, pretrained_cfg.transforms()) against the
recipes' evaluation pipeline; every accepted input kind; clear errors; each recipe's pipeline against
the table in recipes/DATASETS.md."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

import zoo
from recipes.config import list_recipes, load_recipe
from recipes.transforms import build_transforms, describe

REPO = Path(__file__).resolve().parents[1]


def _rgb(h=90, w=120, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("recipe_name", list_recipes())
def test_model_preprocessing_equals_its_recipes_evaluation(recipe_name):
    recipe = load_recipe(recipe_name)
    cfg = zoo.get_pretrained_cfg(recipe["model"]["name"])
    assert cfg.eval_scale == recipe["data"]["eval_scale"]
    rgb = _rgb(300, 410)
    evaluated = build_transforms(recipe, False, cfg.mean, cfg.std)(
        {"image": tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))})["image"]
    assert torch.equal(cfg.transforms()(rgb), evaluated.as_subclass(torch.Tensor))


def test_every_input_kind_gives_the_same_tensor(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "x.png")
    preprocess = zoo.get_pretrained_cfg("spike2former_ade20k").transforms()
    reference = preprocess(rgb)
    assert reference.shape == (3, 512, 683) and reference.dtype == torch.float32
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for other in (Image.fromarray(rgb), tmp_path / "x.png", str(tmp_path / "x.png"), chw, tv_tensors.Image(chw)):
        assert torch.equal(preprocess(other), reference)
    # float images 0..1 are resized as floats, not as 8-bit values: equal up to 8-bit rounding
    assert (preprocess(chw.float() / 255) - reference).abs().max() < 0.05
    grey = rgb[..., 0]
    assert torch.equal(preprocess(grey), preprocess(np.repeat(grey[..., None], 3, 2)))
    mean, std = torch.tensor(preprocess.mean).view(3, 1, 1), torch.tensor(preprocess.std).view(3, 1, 1)
    native = zoo.get_pretrained_cfg("spike2former_camvid").transforms()(rgb)     # CamVid: the image's own size
    torch.testing.assert_close(native, (chw.float() / 255 - mean) / std)


def test_model_preprocess_makes_batches_for_the_model():
    model = zoo.create("spike2former_camvid")
    batch = model.preprocess([_rgb(seed=1), _rgb(seed=2)])
    assert batch.shape == (2, 3, 90, 120) and batch.dtype == torch.float32
    assert torch.equal(model.preprocess(_rgb(seed=1)), batch[:1])
    with pytest.raises(ValueError, match="different sizes"):
        model.preprocess([_rgb(), _rgb(60, 80)])


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((3, 10, 10), np.uint8), ValueError, r"\[H, W, 3\].*pass a torch tensor"),
    (np.zeros((10, 10, 4), np.uint8), ValueError, r"numpy image must be \[H, W, 3\]"),
    (torch.zeros(10, 10, 3, dtype=torch.uint8), ValueError, r"needs \.permute\(2, 0, 1\)"),
    (torch.zeros(2, 3, 10, 10), ValueError, "a batch goes to model.preprocess"),
    (torch.full((3, 10, 10), 2.0), ValueError, "values in 0..1"),
    (torch.zeros(3, 10, 10, dtype=torch.int32), TypeError, "uint8 .* or float"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, "no pixels"),
    ([1, 2, 3], TypeError, "expected a PIL image"),
])
def test_bad_images_get_errors_that_say_what_was_expected(image, error, message):
    with pytest.raises(error, match=message):
        zoo.get_pretrained_cfg("spike2former_camvid").transforms()(image)


def test_the_augmentation_table_lists_what_each_recipe_builds():
    table = (REPO / "recipes" / "DATASETS.md").read_text()
    for name in list_recipes():
        recipe = load_recipe(name)
        row = describe(name, build_transforms(recipe, True, (0, 0, 0), (1, 1, 1)),
                       build_transforms(recipe, False, (0, 0, 0), (1, 1, 1)))
        assert row in table, f"recipes/DATASETS.md lacks (or has an outdated row for) {name}:\n{row}"
