"""Load time: ``create_model(pretrained=True)`` first (materialize) and cached, vs a plain checkpoint.

The first load is the median of ``--repeats`` loads, each on an emptied cache; the cache entry
it writes in the background is not part of it.

    python benchmarks/load_time.py                       # sizes 6x192, 10x512, 12x768
    python benchmarks/load_time.py --sizes 4x64 --repeats 3

For each size: the first load (cold materialization cache), the cached load, and the load of an
ordinary timm checkpoint of the same model (``local-dir:`` export, same timm code path); plus the
materialization FLOPs against this machine's measured fp32 matmul throughput. Writes
benchmarks/results/load_time.json and load_time.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, add_template_argument, command, grouped_bars, save_result


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine (GFLOP/s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_template_argument(parser)
    parser.add_argument("--sizes", nargs="+", default=["6x192", "10x512", "12x768"], help="DEPTHxWIDTH")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=str(RESULTS / "load_time.json"))
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SWEET_HUB_CACHE"] = str(Path(tmp) / "cache")  # cold cache, read by sweet_hub at load time
        import timm

        import sweet_hub
        from sweet_hub.cache import clear_cache, wait_for_writes
        from sweet_hub.tucker import materialize_flops

        source = args.template or str(sweet_hub.BUNDLED_TEMPLATE)
        overlay = dict(file=source) if Path(source).is_dir() else dict(hf_hub_id=source)
        template = sweet_hub.SweetTemplate.from_pretrained(source)
        gflops = matmul_gflops()
        rows = []
        for spec in args.sizes:
            depth, width = (int(v) for v in spec.lower().split("x"))

            def load():
                return timm.create_model("sweet_vit", depth=depth, width=width, pretrained=True, pretrained_cfg_overlay=overlay)

            firsts = []
            for _ in range(args.repeats):  # cold cache each time (clear_cache also waits for the previous entry's write)
                clear_cache()
                seconds, model = timed(load, 1)
                firsts.append(seconds)
            first_s = statistics.median(firsts)
            wait_for_writes()
            export_dir = Path(tmp) / f"plain_{depth}x{width}"
            sweet_hub.export_timm(model, export_dir)
            cached, plain = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine state
                seconds, model = timed(load, 1)
                cached.append(seconds)
                plain.append(timed(lambda: timm.create_model(f"local-dir:{export_dir}", pretrained=True), 1)[0])
            cached_s, plain_s = statistics.median(cached), statistics.median(plain)
            build_s, _ = timed(lambda: template.state_dict_for(depth, width), args.repeats)
            flops = materialize_flops(template.config, depth, width)
            row = dict(
                size=f"{depth}x{width}", params=sum(p.numel() for p in model.parameters()),
                scalers=template.scaler_source(depth, width),
                first_load_s=round(first_s, 4), cached_load_s=round(cached_s, 4), plain_checkpoint_load_s=round(plain_s, 4),
                cached_over_plain=round(cached_s / plain_s, 3), materialize_s=round(build_s, 4),
                materialize_gflop=round(flops / 1e9, 3), matmul_bound_s=round(flops / 1e9 / gflops, 4),
                checkpoint_mb=round((export_dir / "model.safetensors").stat().st_size / 2**20, 2),
            )
            rows.append(row)
            print(f"{row['size']:>8}  {row['params'] / 1e6:6.2f}M params  first {first_s * 1000:7.1f} ms  cached {cached_s * 1000:6.1f} ms  "
                  f"plain {plain_s * 1000:6.1f} ms  materialize {build_s * 1000:6.1f} ms "
                  f"({row['materialize_gflop']} GFLOP, {row['matmul_bound_s'] * 1000:.1f} ms at {gflops:.0f} GFLOP/s)")

    result = {
        "command": command("load_time.py", argv),
        "template": "bundled" if args.template is None else args.template,
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": round(gflops, 1),
        "repeats": args.repeats,
        "sizes": rows,
    }
    save_result(result, args.out, None if args.no_plot else plot)
    return result


def plot(result: dict, path: Path) -> None:
    rows = result["sizes"]
    grouped_bars(path, [r["size"] for r in rows], {
        "first load (materialize)": [r["first_load_s"] * 1000 for r in rows],
        "cached load": [r["cached_load_s"] * 1000 for r in rows],
        "plain timm checkpoint": [r["plain_checkpoint_load_s"] * 1000 for r in rows],
    }, xlabel="depth x width", ylabel="ms", title="timm.create_model(pretrained=True) load time")


if __name__ == "__main__":
    main()
