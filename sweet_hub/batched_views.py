"""Self-supervised views of a whole batch at once: random resized crop, flip, brightness/contrast
jitter and random erasing as a few tensor operations on (B, C, H, W), instead of a Python loop of
torchvision transforms per image.

Why: on a 2-core CPU the per-image loop of :class:`~sweet_hub.data.MultiCropAugment` costs a
sizeable share of a pre-training step (each transform call has a fixed overhead, and a step of 256
images makes 512 global views), time in which the model does not train. Here the random parameters
are drawn for every image from one ``torch.Generator`` and applied with one ``F.grid_sample``
(bilinear, the interpolation torchvision's resize uses) and a few masked arithmetic operations.

The distributions are torchvision's: ``RandomResizedCrop`` (area in ``scale``, log-uniform aspect
ratio in ``ratio``, up to 10 draws and then the whole image), ``RandomHorizontalFlip(p=0.5)``,
``RandomApply([ColorJitter(brightness, contrast)], p)`` (both factors in [1 - j, 1 + j], applied in
a random order) and ``RandomErasing(value=0)``. The draws differ (other calls, other order), pixels
stay float (torchvision rounds uint8 results), and shrinking crops are not anti-aliased (global
crops of the bundled recipe only enlarge).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["crop_boxes", "erase_boxes", "jitter", "resized_crops"]

_ATTEMPTS = 10  # torchvision's RandomResizedCrop and RandomErasing try 10 draws before falling back


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator) -> torch.Tensor:
    """(n, 4) integer boxes (top, left, height, width) as ``RandomResizedCrop.get_params`` draws them:
    the first of 10 draws that fits the image, else the whole image (the fallback for a square image
    whose ratio range holds 1)."""
    area = height * width
    target = area * torch.empty(n, _ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, _ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)
    rows = torch.arange(n)
    h = torch.where(first >= 0, h[rows, first.clamp(min=0)], height)
    w = torch.where(first >= 0, w[rows, first.clamp(min=0)], width)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).floor().long()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).floor().long()
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, flipped: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box, resized to ``size`` x ``size`` (bilinear, pixel centres aligned as in
    torchvision's resize) and mirrored left-right where ``flipped``; ``images`` float (B, C, H, W)."""
    b, _, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    theta = images.new_zeros(b, 2, 3)
    # output x in [-1, 1] (align_corners=False) -> input x: the box's extent, centred on the box
    theta[:, 0, 0] = torch.where(flipped, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(views: torch.Tensor, strength: float, p: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness and contrast jitter (factors in [1 - strength, 1 + strength], random order) on a
    fraction ``p`` of the views, as ``RandomApply([ColorJitter(brightness, contrast)], p)``; views
    in [0, 1]. Contrast blends with each view's mean grey level."""
    if strength <= 0:
        return views
    b = views.shape[0]
    shape = (b, 1, 1, 1)
    applied = torch.rand(b, generator=generator) < p
    low, high = max(0.0, 1 - strength), 1 + strength
    brightness = torch.empty(b).uniform_(low, high, generator=generator)
    contrast = torch.empty(b).uniform_(low, high, generator=generator)
    brightness = torch.where(applied, brightness, 1.0).view(shape)
    contrast = torch.where(applied, contrast, 1.0).view(shape)
    brightness_first = (torch.rand(b, generator=generator) < 0.5).view(shape)

    def brighten(x: torch.Tensor) -> torch.Tensor:
        return (x * brightness).clamp(0, 1)

    def contrasted(x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=(1, 2, 3), keepdim=True)  # one channel: the image; RGB: close to torchvision's luma mean
        return (contrast * x + (1 - contrast) * grey).clamp(0, 1)

    return torch.where(brightness_first, contrasted(brighten(views)), brighten(contrasted(views)))


def erase_boxes(views: torch.Tensor, p: float, scale: tuple[float, float], ratio: tuple[float, float],
                generator: torch.Generator) -> torch.Tensor:
    """``RandomErasing(p, scale, ratio, value=0)`` on every view: with probability ``p`` a rectangle of
    ``scale`` of the area (first fitting draw of 10; none if no draw fits) is set to 0."""
    b, _, height, width = views.shape
    area = height * width
    target = area * torch.empty(b, _ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(b, _ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    h = torch.sqrt(target * aspect).round().long()
    w = torch.sqrt(target / aspect).round().long()
    fits = (h < height) & (w < width)
    first = fits.float().argmax(1)
    rows = torch.arange(b)
    h, w = h[rows, first], w[rows, first]
    erased = (torch.rand(b, generator=generator) < p) & fits.any(1)
    top = (torch.rand(b, generator=generator) * (height - h + 1)).floor().long()
    left = (torch.rand(b, generator=generator) * (width - w + 1)).floor().long()
    ys = torch.arange(height).view(1, -1, 1)
    xs = torch.arange(width).view(1, 1, -1)
    inside = ((ys >= top.view(-1, 1, 1)) & (ys < (top + h).view(-1, 1, 1))
              & (xs >= left.view(-1, 1, 1)) & (xs < (left + w).view(-1, 1, 1)) & erased.view(-1, 1, 1))
    return views.masked_fill(inside.unsqueeze(1), 0.0)
