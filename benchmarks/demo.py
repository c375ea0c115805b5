"""The demo (``make demo``): many ViT sizes from one bundled template, vs random init.

Materializes sizes from the template shipped in the package (anchors, unseen depths and widths,
and 10 x 512, wider and deeper than every anchor), evaluates each by k-NN on frozen features on
the Fashion-MNIST test set against timm's random init of the same architecture, prints a table,
and saves benchmarks/results/demo.json and demo.png (k-NN accuracy vs parameters).

    python benchmarks/demo.py [--template PATH_OR_REPO] [--train-size 5000] [--test-size 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, add_template_argument, command, finish, load_template, pyplot, save_result

DEFAULT_SIZES = ["4x64", "6x128", "8x192", "6x96", "8x256", "10x256", "12x384", "10x512"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="DEPTHxWIDTH")
    parser.add_argument("--train-size", type=int, default=5000, help="k-NN memory: training images")
    parser.add_argument("--test-size", type=int, default=2000, help="test images evaluated")
    parser.add_argument("--out", default=str(RESULTS / "demo.json"))
    args = parser.parse_args(argv)

    import torch

    from training.evaluate import EvalProtocol, evaluate_model, pixel_baselines
    from training.report import random_vit

    template, label = load_template(args.template)
    cfg = template.config
    trained = bool(template.card_info.get("training"))
    print(f"Template: {label}")
    if not trained:
        print("NOTE: this template was never trained (random initialization): expect template ~ random init below.")
    protocol = EvalProtocol("fashion_mnist", cfg.img_size, cfg.in_chans, args.train_size, args.test_size, 1)
    pixels = {k: round(v, 2) for k, v in pixel_baselines(protocol).items()}
    raw = pixels["raw_pixels_knn"]
    print(f"k-NN protocol: {protocol.description['train']} train / {protocol.description['test']} test images, "
          f"cosine k=20 T=0.07; pixels: k-NN {raw:.1f}% raw, {pixels['centred_pixels_knn']:.1f}% mean-centred, "
          f"linear probe {pixels['pixels_linear_probe']:.1f}%\n")
    header = f"{'size':>8} {'params':>8} {'scalers':<22} {'materialize':>12} {'k-NN template':>14} {'k-NN random':>12}"
    print(header)
    print("-" * len(header))
    rows = []
    for spec in args.sizes:
        depth, width = (int(v) for v in spec.lower().split("x"))
        times = []
        for _ in range(3):  # median of 3: one timing is at the mercy of whatever else the machine does
            start = time.perf_counter()
            model = template.materialize(depth, width)
            times.append((time.perf_counter() - start) * 1000)
        materialize_ms = sorted(times)[1]
        knn = evaluate_model(model, protocol, cfg.mean, cfg.std)["knn"]
        knn_random = evaluate_model(random_vit(cfg, depth, width), protocol, cfg.mean, cfg.std)["knn"]
        row = dict(depth=depth, width=width, params=sum(p.numel() for p in model.parameters()),
                   scalers=template.scaler_source(depth, width), materialize_ms=round(materialize_ms, 1),
                   knn_template=round(knn, 2), knn_random=round(knn_random, 2))
        rows.append(row)
        print(f"{spec:>8} {row['params'] / 1e6:7.2f}M {row['scalers']:<22} {materialize_ms:9.0f} ms {knn:13.1f}% {knn_random:11.1f}%",
              flush=True)
        del model
    result = {"command": command("demo.py", argv),
              "template": label, "template_trained": trained,
              "protocol": protocol.description, "raw_pixels_knn": raw, "pixels": pixels, "torch_threads": torch.get_num_threads(),
              "sizes": rows}
    save_result(result, args.out, plot)
    return result


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = sorted(result["sizes"], key=lambda r: r["params"])
    params = [r["params"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(params, [r["knn_template"] for r in rows], "o-", label="SWEET template (materialized)")
    ax.plot(params, [r["knn_random"] for r in rows], "s--", label="random init (timm)")
    ax.axhline(result["raw_pixels_knn"], color="gray", ls=":", label="raw pixels")
    if "pixels" in result:
        ax.axhline(result["pixels"]["centred_pixels_knn"], color="black", ls="--", lw=0.8, label="mean-centred pixels")
    for r, p in zip(rows, params):
        ax.annotate(f"{r['depth']}x{r['width']}", (p, r["knn_template"]), textcoords="offset points", xytext=(3, 5), fontsize=8)
    ax.set_xscale("log")
    finish(fig, ax, path, legend_loc="lower right", xlabel="parameters (M)", ylabel="k-NN accuracy (%)",
           title="Fashion-MNIST k-NN of frozen features")


if __name__ == "__main__":
    main()
