"""Shared plumbing of the benchmark scripts: the command line recorded, JSON + plot output."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def command(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, as recorded in every result file."""
    args = argv if argv is not None else sys.argv[1:]
    return shlex.join(["python", f"benchmarks/{script}", *args])  # quoted where needed, so it can be pasted


def add_template_argument(parser) -> None:
    """``--template``: the template a benchmark reads (a folder or Hub repo id; default: the bundled one)."""
    parser.add_argument("--template", help="template folder or Hub repo id (default: the bundled template)")


def load_template(arg: str | None):
    """The template named by ``--template`` (the bundled one when None) and its label for result files."""
    import sweet_hub

    template = sweet_hub.SweetTemplate.from_pretrained(arg or str(sweet_hub.BUNDLED_TEMPLATE))
    return template, arg or "bundled (sweet_hub/fmnist)"


def add_validation_arguments(parser) -> None:
    """``--train-size`` / ``--test-size``: the memory bank and the queries of the validation protocol."""
    parser.add_argument("--train-size", type=int, default=5000, help="memory bank: train images")
    parser.add_argument("--test-size", type=int, default=2000, help="queries: other train images (the test split is never read)")


def validation_protocol(cfg, args, finetune_labels: int = 1):
    """The validation protocol of a template config ``cfg`` at ``--train-size`` / ``--test-size``: queries are
    held-out train images, so choosing a recipe or a read-out never looks at the test split (``finetune_labels``
    labelled images are drawn from the memory bank)."""
    from training.evaluate import EvalProtocol

    return EvalProtocol("fashion_mnist", cfg.img_size, cfg.in_chans, args.train_size, args.test_size, finetune_labels,
                        holdout=True)


def save_result(result: dict[str, Any], out: str | Path, plot: Callable[[dict[str, Any], Path], None] | None) -> Path:
    """Write ``result`` as JSON (atomically) and its plot next to it (same name, .png)."""
    from sweet_hub.files import write_text

    out = Path(out)
    write_text(out, json.dumps(result, indent=2) + "\n")
    if plot is not None:
        plot(result, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {out.with_suffix('.png').name}" if plot is not None else ""))
    return out


def timed_steps(loss_fn: Callable[[], Any], parameters, steps: int, warmup: int = 2) -> list[float]:
    """Wall time of ``steps`` AdamW steps on ``loss_fn()`` (forward, backward, update), after ``warmup`` untimed ones
    (allocation, and compilation for a compiled model)."""
    import time

    import torch

    optimizer = torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + warmup):
        start = time.perf_counter()
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish(fig, ax, path: Path, legend_loc: str = "best", grid_axis: str = "both", **labels: str) -> None:
    """Label, legend (``legend_loc="outside"``: to the right of the axes, for many series), grid and save a figure,
    then close it."""
    plt = pyplot()
    ax.set(**labels)
    if legend_loc == "outside":
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        ax.legend(loc=legend_loc)
    ax.grid(axis=grid_axis, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grouped_bars(path: Path, groups: list[str], series: dict[str, list[float]], hline: tuple[str, float] | None = None,
                 legend_loc: str | None = None, **labels: str) -> None:
    """One bar per series in each group (e.g. load times per size); ``hline`` = (label, value) reference.
    With a reference line the y axis starts a little below the lowest bar, so differences stay visible."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(groups) + 0.4 * len(series)), 4.5))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))], values, width=width, label=name)
    ax.set_xticks(range(len(groups)), groups)
    if hline is not None:
        ax.axhline(hline[1], color="gray", ls=":", label=hline[0])
        ax.set_ylim(max(0.0, min(x for v in series.values() for x in v if x == x) - 5), None)  # x == x skips NaN (n/a)
    finish(fig, ax, path, legend_loc=legend_loc or ("lower left" if hline else "best"), grid_axis="y", **labels)
