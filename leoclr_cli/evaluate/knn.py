"""Weighted kNN classification on frozen features (InstDisc / MoCo's CIFAR demo monitor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 200, t: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class scores (M, C): the k most cosine-similar bank items vote with weight exp(sim / t)."""
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / t).exp()
        one_hot = F.one_hot(bank_labels[top_idx], num_classes).to(weights.dtype)
        out.append((one_hot * weights.unsqueeze(-1)).sum(dim=1))
    return torch.cat(out)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, k: int = 200, t: float = 0.1) -> dict[str, float]:
    scores = knn_predict(bank, bank_labels, queries, num_classes, k, t)
    return topk_accuracy(scores, labels)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (top-5 is top-C when there are fewer classes)."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit = top == labels.view(-1, 1)
    return {"top1": 100.0 * hit[:, 0].float().mean().item(), "top5": 100.0 * hit.any(1).float().mean().item()}
