"""Evaluate an initialization: k-NN on frozen features, linear probe, few-label fine-tuning.

Works for any timm model (sweet or not, any init) and for raw pixels, and writes JSON, so the
benchmarks call the same functions as users:

    python training/evaluate.py --model sweet_vit --depth 7 --width 160 --template out/template \\
        --knn --linear-probe --finetune-labels 600 --json out/eval.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweet_hub.knn import extract_features, knn_accuracy
from training.data import ImageTensors, load_image_tensors, normalize
from training.selfsup import cosine_schedule, set_lr

__all__ = ["EvalProtocol", "evaluate_model", "extract_features", "finetune", "knn_accuracy", "linear_probe", "pixel_baselines",
           "probe_head", "raw_pixel_knn"]


def _fit_probe(train_feats: Tensor, train_labels: Tensor, epochs: int = 300, lr: float = 0.01, weight_decay: float = 1e-4,
               seed: int = 0) -> tuple[nn.Linear, Tensor, Tensor]:
    """Logistic regression on standardized frozen features (full-batch AdamW): the classifier, mean and std."""
    torch.manual_seed(seed)
    mean, std = train_feats.mean(0), train_feats.std(0) + 1e-6
    xtr = (train_feats - mean) / std
    num_classes = int(train_labels.max()) + 1
    clf = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(clf(xtr), train_labels).backward()
        opt.step()
    return clf, mean, std


def linear_probe(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor, **settings: Any) -> float:
    """Logistic regression on standardized frozen features (full-batch AdamW); accuracy in %. ``settings``: ``epochs``
    (300), ``lr`` (0.01), ``weight_decay`` (1e-4), ``seed`` (0), the ones ``probe_head`` fits with too."""
    clf, mean, std = _fit_probe(train_feats, train_labels, **settings)
    with torch.no_grad():
        return 100.0 * (clf((test_feats - mean) / std).argmax(1) == test_labels).float().mean().item()


def probe_head(train_feats: Tensor, train_labels: Tensor, seed: int = 0) -> nn.Linear:
    """The linear probe as one layer on the raw features (its standardization folded into the weights): a head that
    starts where the frozen features already classify, for fine-tuning that does not begin from a random head."""
    clf, mean, std = _fit_probe(train_feats, train_labels, seed=seed)
    head = nn.Linear(clf.in_features, clf.out_features)
    with torch.no_grad():
        head.weight.copy_(clf.weight / std)
        head.bias.copy_(clf.bias - head.weight @ mean)
    return head


HEAD_INITS = ("fresh", "probe")


def finetune(model: nn.Module, train: ImageTensors, test: ImageTensors, mean, std, steps: int = 200, batch_size: int = 64,
             lr: float = 5e-4, weight_decay: float = 0.05, seed: int = 0, head_init: str = "fresh") -> float:
    """Fine-tune the whole model on a few labelled images; test accuracy in %. The new linear head starts at timm's
    init (``head_init="fresh"``, the README's protocol) or at the linear probe of the frozen features on the same
    labelled images (``"probe"``: linear probing, then fine-tuning), so the backbone is not pulled by a random head."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init={head_init!r}: choose one of {', '.join(HEAD_INITS)}")
    torch.manual_seed(seed)
    num_classes = int(train.labels.max()) + 1
    model.reset_classifier(num_classes)
    if head_init == "probe":
        model.get_classifier().load_state_dict(probe_head(extract_features(model, train.images, mean, std), train.labels,
                                                          seed=seed).state_dict())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        set_lr(opt, cosine_schedule(step, steps, max(1, steps // 10), lr, 0.0))
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
        images = train.images[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        loss = F.cross_entropy(model(normalize(images, mean, std)), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(normalize(test.images[i:i + 500], mean, std)).argmax(1) for i in range(0, len(test), 500)])
    return 100.0 * (preds == test.labels).float().mean().item()


def finetune_seed_scores(model: nn.Module, protocol: EvalProtocol, mean, std, steps: int, seeds: list[int],
                         head_init: str = "fresh") -> list[float]:
    """Test accuracy of few-label fine-tuning of a copy of ``model`` per seed (``model`` is left as it is)."""
    return [finetune(copy.deepcopy(model), protocol.finetune_train, protocol.test, mean, std, steps=steps, seed=seed,
                     head_init=head_init) for seed in seeds]


def finetune_over_seeds(model: nn.Module, protocol: EvalProtocol, mean, std, steps: int, seeds: list[int]) -> dict[str, float]:
    """Few-label fine-tuning of copies of ``model`` (one per seed; ``model`` is left as it is):
    mean and sample std of the test accuracy, since one run of 100 steps on 600 labels swings by ~1 point."""
    scores = finetune_seed_scores(model, protocol, mean, std, steps, seeds)
    return {"finetune_mean": round(statistics.mean(scores), 2),
            "finetune_std": round(statistics.stdev(scores), 2) if len(scores) > 1 else 0.0, "finetune_seeds": len(scores)}


class EvalProtocol:
    """The data of one evaluation protocol, loaded once: k-NN/probe train subset, test subset,
    and a labelled subset for fine-tuning. Subsets are fixed by ``seed``.

    ``holdout=True`` takes the "test" images from the train split instead, disjoint from the
    k-NN/probe subset: a validation protocol for choosing recipes without looking at the test set.
    Its fine-tuning labels are then drawn from the k-NN/probe subset, so no query is ever trained on.
    """

    def __init__(self, data: str = "fashion_mnist", img_size: int = 28, in_chans: int = 1, train_size: int = 5000,
                 test_size: int = 2000, finetune_labels: int = 600, seed: int = 0, holdout: bool = False) -> None:
        full_train = load_image_tensors(data, "train", img_size, in_chans)
        full_test = full_train if holdout else load_image_tensors(data, "test", img_size, in_chans)
        if full_train.labels is None or full_test.labels is None:
            raise ValueError(f"Dataset '{data}' has no labels: k-NN and linear probe need a 'label' column.")
        if holdout:
            self.train, self.test = full_train.disjoint_subsets(train_size, test_size, seed)
        else:
            self.train = full_train.subset(train_size, seed)
            self.test = full_test.subset(test_size, seed + 1)
        # with holdout, the labelled images come from the memory images, so they never include a query
        self.finetune_train = (self.train if holdout else full_train).subset(finetune_labels, seed + 2)
        self.description = dict(data=data, train=len(self.train), test=len(self.test), finetune_labels=len(self.finetune_train),
                                **({"queries": "held-out train images"} if holdout else {}))


def evaluate_model(model: nn.Module, protocol: EvalProtocol, mean, std, knn: bool = True, probe: bool = False,
                   finetune_steps: int = 0, seed: int = 0) -> dict[str, float]:
    """The requested metrics of one model (fine-tuning modifies ``model``; pass a copy to keep it)."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    if knn or probe:
        train_f = extract_features(model, protocol.train.images, mean, std)
        test_f = extract_features(model, protocol.test.images, mean, std)
        if knn:
            out["knn"] = knn_accuracy(train_f, protocol.train.labels, test_f, protocol.test.labels)
        if probe:
            out["linear_probe"] = linear_probe(train_f, protocol.train.labels, test_f, protocol.test.labels, seed=seed)
    if finetune_steps:
        out["finetune"] = finetune(model, protocol.finetune_train, protocol.test, mean, std, steps=finetune_steps, seed=seed)
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def raw_pixel_knn(protocol: EvalProtocol) -> float:
    """k-NN on raw pixels: the bar a useful initialization must clear."""
    return knn_accuracy(_pixels(protocol.train), protocol.train.labels, _pixels(protocol.test), protocol.test.labels)


def pixel_vectors(images: Tensor) -> Tensor:
    """uint8 images as flat [0, 1] vectors: the features of the pixel baselines."""
    return images.flatten(1).float() / 255.0


def _pixels(data: ImageTensors) -> Tensor:
    return pixel_vectors(data.images)


def pixel_baselines(protocol: EvalProtocol) -> dict[str, float]:
    """What pixels alone score on the protocol: k-NN on raw and on mean-centred pixels (cosine
    k-NN of uncentred pixels is dominated by the shared mean image), and a linear probe."""
    train, test = _pixels(protocol.train), _pixels(protocol.test)
    mean = train.mean(0)
    labels = protocol.train.labels, protocol.test.labels
    return {
        "raw_pixels_knn": raw_pixel_knn(protocol),
        "centred_pixels_knn": knn_accuracy(train - mean, labels[0], test - mean, labels[1]),
        "pixels_linear_probe": linear_probe(train, labels[0], test, labels[1]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import timm

    import sweet_hub  # noqa: F401  (registers sweet_* in timm)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sweet_vit", help="timm model name, e.g. sweet_vit or vit_small_patch16_224")
    parser.add_argument("--depth", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--template", help="template folder or Hub repo id (sweet models; default: the bundled template)")
    parser.add_argument("--checkpoint", help="a timm checkpoint to load instead (non-sweet models)")
    parser.add_argument("--random-init", action="store_true", help="evaluate the random initialization of the same architecture")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict passed to timm.create_model")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--knn", action="store_true")
    parser.add_argument("--linear-probe", action="store_true")
    parser.add_argument("--finetune-labels", type=int, default=0, help="fine-tune with this many labelled images (0: skip)")
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if not (args.knn or args.linear_probe or args.finetune_labels):
        parser.error("choose at least one of --knn, --linear-probe, --finetune-labels N")

    kwargs = json.loads(args.model_kwargs)
    if args.depth:
        kwargs["depth"] = args.depth
    if args.width:
        kwargs["width" if args.model.startswith("sweet") else "embed_dim"] = args.width
    if args.template:
        kwargs["pretrained_cfg_overlay"] = dict(file=args.template) if Path(args.template).is_dir() else dict(hf_hub_id=args.template)
    model = timm.create_model(args.model, pretrained=not args.random_init and not args.checkpoint,
                              checkpoint_path=args.checkpoint, **kwargs)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    in_chans, img_size = data_cfg["input_size"][0], data_cfg["input_size"][1]
    protocol = EvalProtocol(args.data, img_size, in_chans, args.train_size, args.test_size, args.finetune_labels or 1, args.seed)
    result = evaluate_model(model, protocol, data_cfg["mean"], data_cfg["std"], knn=args.knn, probe=args.linear_probe,
                            finetune_steps=args.finetune_steps if args.finetune_labels else 0, seed=args.seed)
    report = {"model": args.model, "model_kwargs": {k: v for k, v in kwargs.items() if k != "pretrained_cfg_overlay"},
              "template": args.template, "random_init": args.random_init, "protocol": protocol.description,
              "params": sum(p.numel() for p in model.parameters()), **result}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
