"""Frozen-feature k-NN: how well a model's pooled features separate labelled images without
training (the quality check of a fit, and of every benchmark through training/evaluate.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import normalize

__all__ = ["extract_features", "knn_accuracy", "pooled_features"]


def pooled_features(model: nn.Module, images: Tensor) -> Tensor:
    """Pre-logit features of a timm model (its own pooling)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


@torch.no_grad()
def extract_features(model: nn.Module, images: Tensor, mean, std, batch_size: int = 500) -> Tensor:
    """Pooled pre-logit features of uint8 images (N, C, H, W), model in eval mode."""
    model.eval()
    chunks = [pooled_features(model, normalize(images[i:i + batch_size], mean, std)) for i in range(0, len(images), batch_size)]
    return torch.cat(chunks).float()


@torch.no_grad()
def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> float:
    """Weighted k-NN of DINO (cosine similarity, votes weighted by exp(sim / T)); accuracy in %."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train = F.normalize(train_feats, dim=1)
    test = F.normalize(test_feats, dim=1)
    correct = 0
    for i in range(0, len(test), 1000):
        sims, idx = (test[i:i + 1000] @ train.T).topk(min(k, len(train)), dim=1)
        votes = torch.zeros(len(idx), num_classes)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        correct += (votes.argmax(1) == test_labels[i:i + 1000]).sum().item()
    return 100.0 * correct / len(test)
