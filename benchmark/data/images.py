"""Chest X-ray images: decode once into uint8 squares, then crop/augment/normalise whole batches.

The cache holds each image as ``Resize(S)`` (shorter side, bilinear, as torchvision does on PIL
images) + ``CenterCrop(S)``, grey, uint8, with ``S = round(image_size * 256 / 224)``. A batch
takes the centre ``image_size`` crop (evaluation) or a random flip + affine first (training),
repeats the grey channel to three and ImageNet-normalises.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fusebench.errors import FusebenchError

__all__ = [
    "augment_batch",
    "decode_image",
    "decode_images",
    "resize_many",
    "resize_to_width",
    "to_model_input",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Below this many images a process pool costs more than it saves.
_POOL_THRESHOLD = 64
# Modes Pillow converts to 8-bit grey correctly; 16-bit and 32-bit integer modes it clips at 255.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                              "CMYK", "YCbCr", "LAB", "HSV"})


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """``image`` with 8 bits per channel: 16-bit grey scaled by 255/65535, not clipped.

    Pillow's ``convert("L")`` clips 16-bit values at 255 (a 16-bit PNG turns almost white).
    Mode ``I`` (32-bit integers, how some readers open 16-bit files) is taken as 16-bit when
    its values fit; anything else (floats, negative or larger values) has no defined white
    and is refused.

    Raises:
        FusebenchError: an image mode that has no 8-bit meaning, naming the file.
    """
    if image.mode in _EIGHT_BIT_MODES:
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image).astype(np.int64)
        if pixels.size and pixels.min() >= 0 and pixels.max() <= 65535:
            return Image.fromarray(((pixels * 255 + 32767) // 65535).astype(np.uint8), "L")
    raise FusebenchError(f"{path}: image mode {image.mode} (values "
                         f"{np.asarray(image).min()}..{np.asarray(image).max()}) cannot be read "
                         "as 8-bit or 16-bit grey; convert it to an 8-bit or 16-bit grey image")


def decode_image(path: Path, size: int) -> np.ndarray:
    """One JPEG as a (size, size) uint8 array: grey, shorter side resized to ``size``, centre crop.

    Raises:
        FusebenchError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as image:
            image = _eight_bit(image, path).convert("L")
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(size * long / short)  # torchvision's rounding down of the long side
            new_size = (size, new_long) if width <= height else (new_long, size)
            image = image.resize(new_size, Image.Resampling.BILINEAR)
            left = int(round((new_size[0] - size) / 2.0))
            top = int(round((new_size[1] - size) / 2.0))
            return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except FileNotFoundError as error:
        raise FusebenchError(f"{path}: image missing; run `fusebench data prepare-cxr` or check "
                             "--cxr-root") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise FusebenchError(f"{path}: cannot decode the image ({error}); the JPEG is truncated "
                             "or corrupt: re-create it with `fusebench data prepare-cxr`") from error


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([decode_image(Path(p), size) for p in paths]) if paths else np.zeros(
        (0, size, size), np.uint8)


def decode_images(paths: Sequence[Path], size: int, out: np.ndarray,
                  advance: Callable[[int], None] | None = None) -> None:
    """Decode ``paths`` into ``out`` (N, size, size) uint8, over up to 2 processes."""
    chunk = 32
    jobs = [([str(p) for p in paths[i:i + chunk]], size) for i in range(0, len(paths), chunk)]
    workers = min(2, os.cpu_count() or 1)
    if len(paths) < _POOL_THRESHOLD or workers < 2:
        results = map(_decode_chunk, jobs)
        _fill(results, out, advance)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        _fill(pool.map(_decode_chunk, jobs), out, advance)


def _fill(results, out: np.ndarray, advance: Callable[[int], None] | None) -> None:
    start = 0
    for block in results:
        out[start:start + len(block)] = block
        start += len(block)
        if advance is not None:
            advance(len(block))


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomHorizontalFlip + RandomAffine(45 deg, scale 0.85-1.15, translate 0.15), per image.

    Args:
        images: (B, S, S) uint8 or float.
        generator: the source of randomness (same seed -> same augmentation).

    Returns:
        (B, S, S) float32 in the input's value range; nearest interpolation, zero fill, as
        torchvision's RandomAffine defaults.
    """
    count, size = images.shape[0], images.shape[-1]
    uniform = torch.rand((count, 5), generator=generator)
    flip = uniform[:, 0] < 0.5
    angle = torch.deg2rad(uniform[:, 1] * 90.0 - 45.0)
    scale = 0.85 + uniform[:, 2] * 0.30
    max_shift = 0.15 * size
    shift = torch.round((uniform[:, 3:5] * 2 - 1) * max_shift) * 2.0 / size  # to [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Inverse map output -> input: rotate by -angle, divide by scale, undo the shift.
    theta = torch.stack([
        torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], dim=1),
        torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], dim=1),
    ], dim=1).to(images.device)
    pixels = images.float().unsqueeze(1)
    pixels = torch.where(flip.to(images.device)[:, None, None, None], pixels.flip(-1), pixels)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="nearest", padding_mode="zeros",
                         align_corners=False).squeeze(1)


def to_model_input(images: torch.Tensor, crop: int) -> torch.Tensor:
    """Centre ``crop`` of (B, S, S) grey 0-255 images -> (B, 3, crop, crop) ImageNet-normalised."""
    size = images.shape[-1]
    top = int(round((size - crop) / 2.0))
    pixels = images[:, top:top + crop, top:top + crop].float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (pixels.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


def resize_to_width(source: Path, target: Path, width: int = 512) -> None:
    """MedFuse's resize.py: width 512, aspect kept, BICUBIC; written via a temporary name.

    The original calls ``img.resize((w, h))`` without a filter, which is Pillow's BICUBIC, and
    saves with Pillow's JPEG defaults (quality 75); both are kept so the pixels match.
    """
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with Image.open(source) as image:
            height = int(image.size[1] * (width / float(image.size[0])))
            pixels = _eight_bit(image, source)
            if pixels.mode not in ("L", "RGB", "CMYK"):  # JPEG has no alpha or palette
                pixels = pixels.convert("L")
            pixels.resize((width, height), Image.Resampling.BICUBIC).save(temporary, format="JPEG")
        os.replace(temporary, target)
    except (OSError, ValueError) as error:
        temporary.unlink(missing_ok=True)
        raise FusebenchError(f"{source}: cannot resize the image ({error}); the raw JPEG is "
                             "truncated or corrupt") from error


def _resize_job(args: tuple[str, str]) -> None:
    resize_to_width(Path(args[0]), Path(args[1]))


def resize_many(pairs: Sequence[tuple[Path, Path]], advance: Callable[[int], None]) -> None:
    """Resize ``(source, target)`` pairs over up to 2 processes."""
    jobs = [(str(s), str(t)) for s, t in pairs]
    workers = min(2, os.cpu_count() or 1)
    if len(jobs) < _POOL_THRESHOLD or workers < 2:
        for job in jobs:
            _resize_job(job)
            advance(1)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_resize_job, jobs, chunksize=max(1, math.ceil(len(jobs) / 400))):
            advance(1)
