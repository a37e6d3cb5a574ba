"""Evaluation-time image preprocessing equals MedFuse's torchvision transforms.

MedFuse (MEDFUSE_REFERENCE.md 2.2) evaluates on ``Image.open(path).convert("RGB")`` followed by
``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()`` and ImageNet ``Normalize``. The harness caches
``Resize(S)`` + ``CenterCrop(S)`` as uint8 grey squares with ``S = round(image_size * 256 / 224)``
(256 at the paper's 224) and takes the centre ``image_size`` crop per batch, so its reference at
any image size is ``Resize(S)``, ``CenterCrop(image_size)``, ``ToTensor``, ``Normalize``.

Tolerance: torchvision's ``Resize`` on a PIL image returns a PIL (uint8) image too, so the cache's
uint8 rounding is the same rounding the original makes; both sides then compute
``(x / 255 - mean) / std`` in float32. The only expected difference is float32 operation order,
a few ulps of values up to |(1 - 0.406) / 0.225| = 2.64: ``atol=1e-5``. One grey level is
1 / (255 * 0.225) = 0.0174 after normalisation, so a single pixel off by one level (a different
interpolation, crop offset or rounding) fails. The test images are 8-bit grey like MIMIC-CXR's
JPEGs (the original's ``convert("RGB")`` then gives three equal channels, the harness's grey copy).

At other sizes the cached square's own centre crop is not always torchvision's direct
``CenterCrop(image_size)``: torchvision rounds crop offsets half to even
(``int(round((L - c) / 2))``), and ``round(x) + k == round(x + k)`` for half-integer ``x`` only when
``k = (S - c) / 2`` is even. That holds at 224 (k = 16) and 112 (k = 8); at e.g. 16, 32 or 48 about
half of the aspect ratios land one pixel further along the long axis. Those sizes are therefore
checked against the documented composition ``Resize(S)``, ``CenterCrop(S)``, ``CenterCrop(c)``, and a
strict xfail records the one-pixel difference to the direct crop (it fails once that is fixed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from fusebench.data.cohorts import prepare
from fusebench.data.images import decode_image, to_model_input
from fusebench.data.layout import DataConfig
from fusebench.tasks.builtin import IN_HOSPITAL_MORTALITY

ATOL = 1e-5
# ImageNet statistics as MedFuse's datasets/cxr_dataset.py (get_transforms) passes them to
# transforms.Normalize (MEDFUSE_REFERENCE.md 2.2); written out so that the test does not share the
# harness's constants.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def medfuse_eval_transform(image_size: int, *, cached_square: bool = False
                           ) -> transforms.Compose:
    """MedFuse's evaluation transform with its 256/224 ratio kept at other sizes; with
    ``cached_square``, the harness's documented composition (the stored square cropped first)."""
    stored = round(image_size * 256 / 224)
    return transforms.Compose([
        transforms.Resize(stored),
        *([transforms.CenterCrop(stored)] if cached_square else []),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])


def _write_grey_jpeg(path: Path, width: int, height: int, seed: int) -> Path:
    """A JPEG with structure in both directions (gradients + noise), so that a shifted crop,
    a swapped axis or another filter changes pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = (80 * x / width + 60 * y / height + 40 * np.sin(x / 7.0) * np.cos(y / 5.0)
              + rng.normal(0, 20, (height, width)) + 60)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").save(path, quality=90)
    return path


def _harness_eval_input(path: Path, image_size: int) -> torch.Tensor:
    """What a batch gets for one image at evaluation: the cached square, then the centre crop."""
    stored = DataConfig(Path("ehr"), Path("cxr"), image_size=image_size).stored_image_size
    cached = torch.from_numpy(decode_image(path, stored).copy())[None]
    return to_model_input(cached, image_size)[0]


ASPECT_RATIOS = pytest.mark.parametrize(("width", "height"), [
    (512, 623),   # portrait, as resize.py writes most MIMIC-CXR images (width 512)
    (512, 418),   # landscape
    (300, 300),   # square
    (257, 611),   # odd sides: the crop offsets round
    (611, 257),
    (512, 600),
])


def _both(path: Path, image_size: int, *, cached_square: bool) -> tuple[torch.Tensor, ...]:
    with Image.open(path) as image:
        reference = medfuse_eval_transform(image_size, cached_square=cached_square)(
            image.convert("RGB"))
    return _harness_eval_input(path, image_size), reference


@pytest.mark.parametrize("image_size", [224, 112])
@ASPECT_RATIOS
def test_eval_preprocessing_equals_medfuse_resize_and_center_crop(
        tmp_path: Path, width: int, height: int, image_size: int) -> None:
    path = _write_grey_jpeg(tmp_path / "image.jpg", width, height, seed=width * 1000 + height)

    ours, reference = _both(path, image_size, cached_square=False)

    assert ours.shape == reference.shape == (3, image_size, image_size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


@pytest.mark.parametrize("image_size", [48, 32, 16])
@ASPECT_RATIOS
def test_eval_preprocessing_at_small_sizes_equals_the_cached_square_composition(
        tmp_path: Path, width: int, height: int, image_size: int) -> None:
    path = _write_grey_jpeg(tmp_path / "image.jpg", width, height, seed=width * 1000 + height)

    ours, reference = _both(path, image_size, cached_square=True)

    assert ours.shape == reference.shape == (3, image_size, image_size)
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


@pytest.mark.xfail(strict=True, reason="known: at sizes where (S - image_size) / 2 is odd the "
                   "cached square's centre crop sits one pixel off torchvision's direct "
                   "CenterCrop(image_size) on the long axis for about half of the aspect ratios")
def test_eval_preprocessing_at_48_equals_the_direct_center_crop(tmp_path: Path) -> None:
    # 512 x 623 at 48: S = 55, long side int(55 * 623 / 512) = 66; offsets round(5.5) + round(3.5)
    # = 6 + 4 = 10 on the cached square, round(9.0) = 9 directly.
    path = _write_grey_jpeg(tmp_path / "image.jpg", 512, 623, seed=1)

    ours, reference = _both(path, 48, cached_square=False)

    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


def test_stored_size_at_224_is_medfuse_resize_256() -> None:
    # MEDFUSE_REFERENCE.md 2.2: Resize(256) before CenterCrop(224).
    assert DataConfig(Path("ehr"), Path("cxr"), image_size=224).stored_image_size == 256


def test_a_one_level_difference_exceeds_the_tolerance() -> None:
    # The tolerance is tight enough to see a single grey level in the darkest channel.
    one_level = 1 / 255 / max(IMAGENET_STD)
    assert one_level > 100 * ATOL


def test_cohort_batches_at_evaluation_equal_the_torchvision_transform_of_each_file(
        demo_tiny_root: Path, tmp_path: Path) -> None:
    # The whole path (cache build, memory map, batching) at image size 16, on the demo's JPEGs.
    config = DataConfig(demo_tiny_root / "ehr", demo_tiny_root / "cxr",
                        cache_dir=tmp_path / "cache", image_size=16)
    view = prepare(config, IN_HOSPITAL_MORTALITY, progress=False).cohort("val", "paired")
    batch = next(view.batches(len(view), shuffle=False, augment=False))
    transform = medfuse_eval_transform(16, cached_square=True)

    assert len(view) > 0
    for row, dicom_id in enumerate(view.dicom_ids):
        with Image.open(demo_tiny_root / "cxr" / "resized" / f"{dicom_id}.jpg") as image:
            reference = transform(image.convert("RGB"))
        torch.testing.assert_close(batch["cxr"][row], reference, rtol=0, atol=ATOL)
