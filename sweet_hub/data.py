"""Images for fitting, scaler learning, pre-training and evaluation, all through `datasets`.

A data spec is ``fashion_mnist`` (Debian's dataset-fashion-mnist, turned into a cached
``datasets.Dataset``), ``imagefolder:PATH`` (any folder of class sub-folders), or any Hub dataset
id (read from the HF cache when offline). Images are decoded once into a uint8 tensor at the
template's resolution and cached next to the datasets cache: these datasets are small, and a
tensor in memory keeps a CPU busy with the model instead of with JPEG/PNG decoding.

Views for self-supervised training and distillation come from torchvision.transforms.v2
(:class:`MultiCropAugment`), seeded per call so runs replay exactly. ``datasets`` is imported
only when a dataset is loaded (``pip install sweet-hub[train]``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision.transforms import v2

from .errors import SweetHubError
from .files import save_safetensors

__all__ = [
    "FMNIST_DIR",
    "FMNIST_LABELS",
    "DataError",
    "ImageTensors",
    "MultiCropAugment",
    "fashion_mnist",
    "load_image_dataset",
    "load_image_tensors",
    "normalize",
]

FMNIST_DIR = Path(os.environ.get("SWEET_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FMNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DataError(SweetHubError, FileNotFoundError):
    """A dataset cannot be found or read; the message says how to get it."""


def _datasets():
    """The `datasets` library, or a DataError saying how to install it (it is an optional dependency)."""
    try:
        import datasets
    except ImportError:
        raise DataError("Loading images needs the `datasets` library: pip install 'sweet-hub[train]' (or pip install datasets).") from None
    return datasets


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic, dims, then raw uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fmnist_rows(images_path: str, labels_path: str):
    from PIL import Image

    images, labels = _read_idx(Path(images_path)), _read_idx(Path(labels_path))
    for image, label in zip(images, labels):
        yield {"image": Image.fromarray(image, mode="L"), "label": int(label)}


def fashion_mnist(split: str = "train"):
    """Fashion-MNIST from the Debian package as a ``datasets.Dataset`` (cached by datasets)."""
    datasets = _datasets()

    if split not in _FMNIST_FILES:
        raise DataError(f"Fashion-MNIST has splits 'train' and 'test', not '{split}'.")
    paths = [FMNIST_DIR / name for name in _FMNIST_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            f"`sudo apt-get install -y dataset-fashion-mnist` (or `make data`), set SWEET_FMNIST_DIR to a folder "
            f"holding the idx files, or pass --data imagefolder:PATH or a Hub dataset id."
        )
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FMNIST_LABELS)})
    return datasets.Dataset.from_generator(
        _fmnist_rows, features=features,
        gen_kwargs={"images_path": str(paths[0]), "labels_path": str(paths[1])},
    )


def _digits_rows(split: str):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = range(1000) if split == "train" else range(1000, len(images))
    for i in index:
        yield {"image": Image.fromarray(images[i], mode="L"), "label": int(digits.target[i])}


def sklearn_digits(split: str = "train"):
    """scikit-learn's 8x8 digits (shipped with scikit-learn, no download) as a ``datasets.Dataset``:
    a transfer set unlike Fashion-MNIST. Fixed split: first 1000 images train, last 797 test."""
    datasets = _datasets()

    if split not in ("train", "test"):
        raise DataError(f"sklearn_digits has splits 'train' and 'test', not '{split}'.")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    return datasets.Dataset.from_generator(_digits_rows, features=features, gen_kwargs={"split": split})


def load_image_dataset(spec: str, split: str = "train"):
    """``fashion_mnist`` | ``sklearn_digits`` | ``imagefolder:PATH`` | a Hub dataset id -> ``datasets.Dataset``."""
    datasets = _datasets()

    if spec in ("fashion_mnist", "fmnist"):
        return fashion_mnist(split)
    if spec == "sklearn_digits":
        return sklearn_digits(split)
    try:
        if spec.startswith("imagefolder:"):
            path = spec.split(":", 1)[1]
            if not Path(path).is_dir():
                raise DataError(f"imagefolder path '{path}' is not a folder (expected PATH/<class>/<image files>).")
            return datasets.load_dataset("imagefolder", data_dir=path, split=split)
        return datasets.load_dataset(spec, split=split)
    except DataError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DataError(
            f"Cannot load dataset '{spec}' split '{split}': {e}. Use 'fashion_mnist', 'imagefolder:PATH', or a Hub dataset id "
            f"that is in the HF cache when offline."
        ) from None


@dataclass
class ImageTensors:
    """A whole (small) image dataset in memory: uint8 images (N, C, H, W) and int64 labels (or None)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset_index(self, count: int | None, seed: int = 0) -> torch.Tensor:
        """The sorted indices :meth:`subset` takes (all of them if ``count`` is None or larger), so a caller can
        tell which images a subset left out."""
        if count is None or count >= len(self):
            return torch.arange(len(self))
        return torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values

    def subset(self, count: int | None, seed: int = 0) -> ImageTensors:
        """A class-agnostic random subset of ``count`` images (all if None or larger)."""
        if count is None or count >= len(self):
            return self
        index = self.subset_index(count, seed)
        return ImageTensors(self.images[index], None if self.labels is None else self.labels[index], f"{self.name}[{count}]")

    def disjoint_subsets(self, first: int, second: int, seed: int = 0) -> tuple[ImageTensors, ImageTensors]:
        """Two random subsets with no image in common (a validation split carved from one split)."""
        if first + second > len(self):
            raise ValueError(f"{self.name} has {len(self)} images, fewer than the {first} + {second} asked for.")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        parts = perm[:first].sort().values, perm[first:first + second].sort().values
        return tuple(ImageTensors(self.images[i], None if self.labels is None else self.labels[i], f"{self.name}[{len(i)}]")
                     for i in parts)


def _tensor_cache_dir() -> Path:
    from datasets import config as ds_config

    return Path(ds_config.HF_DATASETS_CACHE) / "sweet_hub_tensors"


def load_image_tensors(spec: str, split: str, img_size: int, in_chans: int, image_column: str = "image",
                       label_column: str = "label") -> ImageTensors:
    """Decode a dataset split once to (N, in_chans, img_size, img_size) uint8, cached on disk."""
    dataset = load_image_dataset(spec, split)
    key = hashlib.sha256(f"{dataset._fingerprint}:{img_size}:{in_chans}:{image_column}:{label_column}".encode()).hexdigest()[:24]
    path = _tensor_cache_dir() / f"{key}.safetensors"
    name = f"{spec}:{split}"
    if path.is_file():
        data = load_file(path)
        return ImageTensors(data["images"], data.get("labels"), name)
    if image_column not in dataset.column_names:
        raise DataError(f"Dataset '{spec}' has no '{image_column}' column (columns: {dataset.column_names}).")
    mode = {1: "L", 3: "RGB"}.get(in_chans)
    if mode is None:
        raise DataError(f"in_chans={in_chans} is not supported for image datasets (use 1 or 3).")
    images = np.stack([
        np.asarray(img.convert(mode).resize((img_size, img_size)), dtype=np.uint8).reshape(img_size, img_size, in_chans)
        for img in dataset[image_column]
    ])
    tensors = {"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()}
    if label_column in dataset.column_names:
        tensors["labels"] = torch.tensor(dataset[label_column], dtype=torch.int64)
    save_safetensors(tensors, path)
    return ImageTensors(tensors["images"], tensors.get("labels"), name)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalized float32."""
    return standardize(images.float() / 255.0, mean, std)


def standardize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Float (N, C, H, W) in [0, 1] -> (x - mean) / std per channel."""
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


class MultiCropAugment:
    """Global and local SSL crops (DINO-style multi-crop) with torchvision.transforms.v2.

    Returns ``n_global`` lists of views at ``img_size`` and ``n_local`` at ``local_size``, each
    a normalized float batch. Randomness comes from the ``seed`` argument only.
    :meth:`crops_with_boxes` also says where each global view was cut from (dense losses match
    tokens by position); it draws the same random numbers, so both give the same views.
    ``erase_p`` > 0 also blanks a random rectangle of each global view (set to 0, the background
    of dark-background data such as Fashion-MNIST) with that probability: an occlusion the
    features must see past. At 0 it draws no random numbers, so views are as without it.
    ``batched=True`` makes the same kinds of views for the whole batch at once
    (:mod:`sweet_hub.batched_views`: same distributions, other random draws, float pixels), which
    frees the time the per-image loop takes from each pre-training step.
    """

    def __init__(self, img_size: int, mean: tuple[float, ...], std: tuple[float, ...], n_global: int = 2, n_local: int = 0,
                 local_size: int | None = None, global_scale: tuple[float, float] = (0.35, 1.0),
                 local_scale: tuple[float, float] = (0.1, 0.35), jitter: float = 0.4, flip: bool = True,
                 erase_p: float = 0.0, erase_scale: tuple[float, float] = (0.02, 0.25), batched: bool = False) -> None:
        self.mean, self.std = mean, std
        self.batched = batched
        self.jitter_strength = jitter
        self.n_global, self.n_local = n_global, n_local
        self.global_crop = v2.RandomResizedCrop(img_size, scale=global_scale, antialias=True)
        self.local_crop = v2.RandomResizedCrop(local_size or img_size // 2, scale=local_scale, antialias=True)
        self.flip = v2.RandomHorizontalFlip() if flip else None
        self.jitter = v2.RandomApply([v2.ColorJitter(brightness=jitter, contrast=jitter)], p=0.8)
        self.erase = v2.RandomErasing(p=erase_p, scale=erase_scale, value=0) if erase_p > 0 else None

    def __call__(self, images: torch.Tensor, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        global_views, local_views, _ = self.crops_with_boxes(images, seed)
        return global_views, local_views

    def crops_with_boxes(self, images: torch.Tensor, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """The views and, per global view, a (B, 5) tensor of each crop's top, left, height and
        width in source pixels and whether it was flipped (1) or not (0)."""
        if self.batched:
            return self._batched_crops_with_boxes(images, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            globals_and_boxes = [self._views(self.global_crop, images, self.erase) for _ in range(self.n_global)]
            local_views = [self._views(self.local_crop, images)[0] for _ in range(self.n_local)]
        return [v for v, _ in globals_and_boxes], local_views, [b for _, b in globals_and_boxes]

    def _batched_crops_with_boxes(self, images: torch.Tensor,
                                  seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """:meth:`crops_with_boxes` for the whole batch at once (``batched=True``), every draw from one generator."""
        from .batched_views import crop_boxes, erase_boxes, jitter, resized_crops

        generator = torch.Generator().manual_seed(seed)
        source = images.float() / 255.0
        _, _, height, width = source.shape

        # the same settings as the per-image path: read from its transforms
        def views(crop: v2.RandomResizedCrop, erase: v2.RandomErasing | None) -> tuple[torch.Tensor, torch.Tensor]:
            boxes = crop_boxes(len(source), height, width, crop.scale, crop.ratio, generator)
            flipped = torch.rand(len(source), generator=generator) < (self.flip.p if self.flip is not None else 0.0)
            out = jitter(resized_crops(source, boxes, flipped, crop.size[0]), self.jitter_strength, self.jitter.p, generator)
            if erase is not None:
                out = erase_boxes(out, erase.p, erase.scale, erase.ratio, generator)
            return standardize(out, self.mean, self.std), torch.cat([boxes, flipped.long().unsqueeze(1)], dim=1)

        globals_and_boxes = [views(self.global_crop, self.erase) for _ in range(self.n_global)]
        local_views = [views(self.local_crop, None)[0] for _ in range(self.n_local)]
        return [v for v, _ in globals_and_boxes], local_views, [b for _, b in globals_and_boxes]

    def _views(self, crop: v2.RandomResizedCrop, images: torch.Tensor,
               erase: v2.RandomErasing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop, flip, jitter (and erase) each image, drawing random numbers in the order ``v2.Compose`` would."""
        views, boxes = [], []
        for img in images:
            params = crop.make_params([img])
            view = crop.transform(img, params)
            # RandomHorizontalFlip.forward draws torch.rand(1) and flips when it is below p
            flipped = self.flip is not None and bool(torch.rand(1) < self.flip.p)
            if flipped:
                view = self.flip.transform(view, {})
            view = self.jitter(view)
            views.append(erase(view) if erase is not None else view)
            boxes.append([params["top"], params["left"], params["height"], params["width"], int(flipped)])
        return normalize(torch.stack(views), self.mean, self.std), torch.tensor(boxes)
