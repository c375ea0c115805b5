"""Soak: many ``create_model(pretrained=True)`` calls with random sizes in one process; RSS must stay flat.

    python benchmarks/soak.py                 # 300 loads of random sizes from the bundled template
    python benchmarks/soak.py --loads 30      # shorter

Each load materializes a random size (depth 2-10, width 64-384) or reads it from a private
cache; the model is dropped before the next load. Resident memory (RSS, from /proc) is sampled
after every load; a leak (a template or a state dict kept alive by a cache, a config or a hook)
shows as RSS growing with the number of loads. Writes benchmarks/results/soak.json and a plot.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, command, finish, pyplot, save_result


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(1, len(result["rss_mb"]) + 1), result["rss_mb"], lw=1, label="RSS after load")
    finish(fig, ax, path, xlabel="create_model call", ylabel="RSS (MB)",
           title=f"{len(result['rss_mb'])} loads of random sizes: RSS {result['rss_first_quarter_mb']:.0f} -> {result['rss_last_quarter_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "soak.json"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SWEET_HUB_CACHE"] = cache
        import timm

        import sweet_hub  # noqa: F401  (registers sweet_vit)

        rng = random.Random(args.seed)
        samples, start = [], time.perf_counter()
        for i in range(args.loads):
            depth, width = rng.randint(2, 10), rng.choice(range(64, 385, 32))
            model = timm.create_model("sweet_vit", depth=depth, width=width, pretrained=True)
            del model
            gc.collect()
            samples.append(round(rss_mb(), 1))
            if (i + 1) % 50 == 0:
                print(f"{i + 1} loads, RSS {samples[-1]:.0f} MB", flush=True)
        seconds = time.perf_counter() - start
    quarter = max(1, len(samples) // 4)
    first, last = statistics.median(samples[:quarter]), statistics.median(samples[-quarter:])
    result = {"command": command("soak.py", argv), "loads": args.loads, "seconds": round(seconds, 1), "rss_mb": samples,
              "rss_first_quarter_mb": first, "rss_last_quarter_mb": last, "rss_max_mb": max(samples),
              "growth_mb": round(last - first, 1)}
    print(f"RSS median first quarter {first:.0f} MB, last quarter {last:.0f} MB, max {max(samples):.0f} MB ({seconds:.0f} s)")
    save_result(result, args.out, plot)
    return result


if __name__ == "__main__":
    main()
