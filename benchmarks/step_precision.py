"""Can a pre-training step get cheaper on this CPU? fp32 against bf16 and torch.compile, same ViT.

    python benchmarks/step_precision.py [--sizes 4x64 6x128 8x192] [--batch-size 512] [--modes fp32 bf16_autocast ...]

At a fixed wall-clock budget a cheaper step is more images seen, and images per minute were the
lever that moved quality most in the recipe study. This times one optimizer step (forward,
backward, AdamW) of a plain timm ViT of each anchor size on a batch of 28x28 images, median over
``--steps`` after two warm-up steps, in each mode:

- ``fp32``: what pre-training runs;
- ``bf16_autocast``: ``torch.autocast("cpu", bfloat16)``, what ``mixed_precision=bf16`` does;
- ``bf16_weights``: the whole model and its input in bfloat16 (no casts inside the step);
- ``compiled``: ``torch.compile`` of the fp32 model (``compile_seconds``: the mode's wall time outside
  the timed steps, i.e. compilation plus the two warm-up steps).

A mode below 1.0x of fp32 is a lever worth a recipe-study round; above it, not on this machine.
Writes benchmarks/results/step_precision.json and a plot.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

from common import RESULTS, command, grouped_bars, save_result, timed_steps

MODES = ("fp32", "bf16_autocast", "bf16_weights", "compiled")


def step_seconds(model, images, steps: int, autocast: bool = False) -> list[float]:
    """Wall time of each of ``steps`` optimizer steps after two warm-up steps (the first also compiles)."""
    import torch

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(images).float().pow(2).mean()

    return timed_steps(loss, model.parameters(), steps)


def mode_runner(mode: str, model, images) -> tuple[Any, Any, bool]:
    """The model, input and autocast flag of one mode (each mode gets its own copy of the weights)."""
    import torch

    model = copy.deepcopy(model)
    if mode == "bf16_weights":
        return model.to(torch.bfloat16), images.to(torch.bfloat16), False
    if mode == "compiled":
        return torch.compile(model), images, False
    return model, images, mode == "bf16_autocast"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["4x64", "6x128", "8x192"], help="DEPTHxWIDTH")
    parser.add_argument("--batch-size", type=int, default=512, help="images a step (the recipe: 256 images x 2 views)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", default=str(RESULTS / "step_precision.json"))
    args = parser.parse_args(argv)

    import timm
    import torch

    import sweet_hub
    from sweet_hub.config import parse_size, vit_args

    cfg = sweet_hub.SweetTemplate.from_pretrained(sweet_hub.BUNDLED_TEMPLATE).config
    images = torch.randn(args.batch_size, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    rows = []
    for spec in args.sizes:
        depth, width = parse_size(spec)
        torch.manual_seed(0)
        model = timm.create_model("vit_base_patch16_224", pretrained=False, **{**vit_args(cfg, depth, width), "num_classes": 0})
        row: dict[str, Any] = {"size": spec}
        for mode in args.modes:
            start = time.perf_counter()
            model_m, images_m, autocast = mode_runner(mode, model, images)
            times = step_seconds(model_m, images_m, args.steps, autocast=autocast)
            row[mode] = round(statistics.median(times), 4)
            if mode == "compiled":
                row["compile_seconds"] = round(time.perf_counter() - start - sum(times), 1)
        if "fp32" in row:
            row["vs_fp32"] = {m: round(row[m] / row["fp32"], 3) for m in args.modes if m != "fp32"}
        rows.append(row)
        print(f"{spec:>6}: " + "  ".join(f"{m} {row[m] * 1000:.0f} ms" for m in args.modes)
              + (f"  ({', '.join(f'{m} {v:.2f}x' for m, v in row['vs_fp32'].items())} of fp32)" if "vs_fp32" in row else ""),
              flush=True)
    result = {"command": command("step_precision.py", argv), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "cpu_bf16": _cpu_flags(("amx_bf16", "avx512_bf16")), "batch_size": args.batch_size, "rows": rows}
    save_result(result, args.out, plot)
    return result


def _cpu_flags(wanted: tuple[str, ...]) -> list[str]:
    """Which of ``wanted`` this CPU advertises (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in wanted if f in flags]


def plot(result: dict[str, Any], path: Path) -> None:
    rows = result["rows"]
    modes: list[str] = [m for m in MODES if m in rows[0]]
    grouped_bars(path, [r["size"] for r in rows], {m: [r[m] * 1000 for r in rows] for m in modes},
                 xlabel="depth x width", ylabel="ms per optimizer step",
                 title=f"one step of a plain timm ViT ({result['batch_size']} images, {result['torch_threads']} threads)")


if __name__ == "__main__":
    main()
