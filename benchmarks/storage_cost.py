"""Storage and pre-training compute: one template + N scaler files vs N separate checkpoints.

    python benchmarks/storage_cost.py [--sizes 4x64 6x128 ...]

Bytes are those of real files: the template, each size's scaler file (stored, or derived and
written here), and each size exported as an ordinary timm safetensors checkpoint. Compute
compares the bundled template's pre-training (images seen, minutes, from its model card) with
pre-training every size separately on the same number of images, priced with the plain-timm step
times measured by train_overhead.py when available (anchor sizes only, marked as estimates).
Writes benchmarks/results/storage_cost.json and .png.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import RESULTS, command, finish, pyplot, save_result

DEFAULT_SIZES = ["4x64", "6x128", "8x192", "6x96", "8x256", "10x256", "12x384", "10x512"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", help="template folder (default: the bundled template)")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--out", default=str(RESULTS / "storage_cost.json"))
    args = parser.parse_args(argv)

    import sweet_hub
    from sweet_hub.config import TEMPLATE_NAME, scaler_filename
    from sweet_hub.files import save_safetensors

    folder = Path(args.template or sweet_hub.BUNDLED_TEMPLATE)
    template = sweet_hub.SweetTemplate.from_pretrained(folder)
    template_bytes = (folder / TEMPLATE_NAME).stat().st_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.sizes:
            depth, width = (int(v) for v in spec.split("x"))
            stored = folder / scaler_filename(depth, width)
            if stored.is_file():
                scaler_bytes = stored.stat().st_size
            else:
                path = Path(tmp) / f"{spec}.safetensors"
                save_safetensors(template.scalers_for(depth, width), path, {"format": "sweet-scalers"})
                scaler_bytes = path.stat().st_size
            export = sweet_hub.export_timm(template.materialize(depth, width), Path(tmp) / f"export_{spec}")
            checkpoint_bytes = (export / "model.safetensors").stat().st_size
            rows.append(dict(size=spec, scaler_bytes=scaler_bytes, checkpoint_bytes=checkpoint_bytes,
                             scaler_source=template.scaler_source(depth, width)))
            print(f"{spec:>8}: scalers {scaler_bytes / 1024:8.1f} KB   checkpoint {checkpoint_bytes / 2**20:8.2f} MB")

    total_sweet = template_bytes + sum(r["scaler_bytes"] for r in rows)
    total_ckpt = sum(r["checkpoint_bytes"] for r in rows)
    print(f"template {template_bytes / 2**20:.2f} MB + {len(rows)} scaler files = {total_sweet / 2**20:.2f} MB "
          f"vs {len(rows)} checkpoints = {total_ckpt / 2**20:.2f} MB ({total_ckpt / total_sweet:.1f}x)")

    compute = {}
    stats = template.card_info.get("stats")
    if stats:
        images, minutes = stats["images_seen"], round(stats["train_seconds"] / 60, 1)
        compute = {"template_images_seen": images, "template_minutes": minutes}
        overhead = RESULTS / "train_overhead.json"
        if overhead.is_file():
            steps = {r["size"]: r for r in json.loads(overhead.read_text())["steps"]}
            per_size = {s: round(images / r["images_per_step"] * r["plain_timm_step_s"] / 60, 1) for s, r in steps.items()}
            compute.update(per_size_minutes_estimate=per_size, per_size_total_minutes_estimate=round(sum(per_size.values()), 1),
                           note="per-size minutes = same images seen at the plain-timm step time measured by train_overhead.py")
            print(f"pre-training: one template {minutes:.0f} min for all sizes vs ~{sum(per_size.values()):.0f} min to pre-train "
                  f"only the {len(per_size)} anchor sizes separately on the same data")
    result = {"command": command("storage_cost.py", argv),
              "template_bytes": template_bytes, "sizes": rows, "total_template_plus_scalers_bytes": total_sweet,
              "total_checkpoints_bytes": total_ckpt, "ratio": round(total_ckpt / total_sweet, 2), "compute": compute}
    save_result(result, args.out, plot)
    return result


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = result["sizes"]
    cum_ckpt, cum_sweet = [], []
    total_c, total_s = 0, result["template_bytes"]
    for r in rows:
        total_c += r["checkpoint_bytes"]
        total_s += r["scaler_bytes"]
        cum_ckpt.append(total_c / 2**20)
        cum_sweet.append(total_s / 2**20)
    n = range(1, len(rows) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, cum_ckpt, "s-", label="one checkpoint per size")
    ax.plot(n, cum_sweet, "o-", label="template + scaler files")
    finish(fig, ax, path, xlabel="number of sizes stored", ylabel="MB (cumulative)", title="storage")


if __name__ == "__main__":
    main()
