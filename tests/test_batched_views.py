"""sweet_hub.batched_views and MultiCropAugment(batched=True): torchvision's view distributions for a
whole batch at once, with the geometry the dense term's token matches assume."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from sweet_hub.batched_views import crop_boxes, erase_boxes, jitter, resized_crops
from sweet_hub.data import MultiCropAugment


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_whole_image_box_is_the_image_and_flip_mirrors_it():
    images = _images()
    boxes = torch.tensor([[0, 0, 28, 28]] * 8)
    same = resized_crops(images, boxes, torch.zeros(8, dtype=torch.bool), 28)
    assert torch.allclose(same, images, atol=1e-5)
    mirrored = resized_crops(images, boxes, torch.ones(8, dtype=torch.bool), 28)
    assert torch.allclose(mirrored, images.flip(-1), atol=1e-5)


def test_crops_match_torchvisions_resized_crop_inside_the_box():
    """Bilinear with torchvision's pixel-centre alignment; only the outermost output pixels may differ (they blend
    with the pixel beyond the box, where torchvision repeats the box's edge)."""
    images = _images(3)
    boxes = torch.tensor([[4, 2, 20, 24], [0, 0, 14, 14], [10, 7, 18, 21]])
    ours = resized_crops(images, boxes, torch.zeros(3, dtype=torch.bool), 28)
    for image, box, view in zip(images, boxes.tolist(), ours):
        expected = TF.resized_crop(image, *box, [28, 28], antialias=False)
        assert torch.allclose(view[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)


def test_crop_boxes_follow_random_resized_crop():
    """Every box fits the image, its area is within the scale range (up to rounding of the sides), the aspect ratio
    within 3/4..4/3, and the draws replay from the generator's seed."""
    boxes = crop_boxes(4000, 28, 28, (0.35, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    area = (h * w).float() / 784
    assert area.min() >= 0.30 and area.max() <= 1.0 and 0.55 < area.mean() < 0.75
    ratio = w.float() / h.float()
    assert ratio.min() >= 0.7 and ratio.max() <= 1.45
    assert torch.equal(boxes, crop_boxes(4000, 28, 28, (0.35, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)))
    # positions spread over the image: both halves get crops starting there
    small = crop_boxes(4000, 28, 28, (0.1, 0.2), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    assert (small[:, 0] < 10).any() and (small[:, 0] > 14).any()


def test_jitter_changes_brightness_and_contrast_of_the_chosen_views_only():
    views = _images(2000)
    assert torch.equal(jitter(views, 0.0, 0.8, torch.Generator().manual_seed(0)), views)
    assert torch.equal(jitter(views, 0.4, 0.0, torch.Generator().manual_seed(0)), views)
    out = jitter(views, 0.4, 0.8, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    changed = (out - views).abs().flatten(1).amax(1) > 1e-6
    assert 0.75 < changed.float().mean() < 0.85  # RandomApply p=0.8 (a factor of exactly 1 is a measure-zero draw)


def test_erase_boxes_blank_one_rectangle_of_the_given_area():
    views = torch.ones(500, 1, 28, 28)
    out = erase_boxes(views, 1.0, (0.02, 0.25), (0.3, 3.3), torch.Generator().manual_seed(0))
    erased = (out == 0).flatten(1).float()
    fraction = erased.mean(1)
    assert (fraction >= 0.015).all() and (fraction <= 0.27).all()
    rows, cols = (out[:, 0] == 0).any(2), (out[:, 0] == 0).any(1)
    assert torch.equal(erased.sum(1), rows.sum(1).float() * cols.sum(1).float())  # one rectangle per view
    assert torch.equal(erase_boxes(views, 0.0, (0.02, 0.25), (0.3, 3.3), torch.Generator().manual_seed(0)), views)


@pytest.mark.parametrize("n_local", [0, 2])
def test_batched_multicrop_gives_views_boxes_and_replays(n_local):
    """MultiCropAugment(batched=True): the loop version's shapes and box format, boxes that say where each view was
    cut (the dense term's token matches read them), the same views for the same seed and others for another."""
    images = (_images(6) * 255).to(torch.uint8)
    augment = MultiCropAugment(28, (0.3,), (0.4,), n_global=2, n_local=n_local, local_size=14, jitter=0.0, batched=True)
    global_views, local_views, boxes = augment.crops_with_boxes(images, seed=5)
    assert [v.shape for v in global_views] == [(6, 1, 28, 28)] * 2 and [v.shape for v in local_views] == [(6, 1, 14, 14)] * n_local
    assert len(boxes) == 2 and boxes[0].shape == (6, 5) and set(boxes[0][:, 4].tolist()) <= {0, 1}
    source = images.float() / 255
    recut = resized_crops(source, boxes[1][:, :4], boxes[1][:, 4].bool(), 28)
    assert torch.allclose(global_views[1], (recut - 0.3) / 0.4, atol=1e-5)
    again = augment.crops_with_boxes(images, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(global_views + local_views, again[0] + again[1]))
    assert not torch.equal(augment.crops_with_boxes(images, seed=6)[0][0], global_views[0])
    area = (boxes[0][:, 2] * boxes[0][:, 3]).float() / 784
    assert (area >= 0.3).all()  # the global crops' scale range (0.35-1), sides rounded
