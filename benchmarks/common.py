"""Shared plumbing of the benchmark scripts: the command line recorded, JSON + plot output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def command(script: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, as recorded in every result file."""
    args = argv if argv is not None else sys.argv[1:]
    return " ".join(["python", f"benchmarks/{script}", *args])


def save_result(result: dict[str, Any], out: str | Path, plot: Callable[[dict[str, Any], Path], None] | None) -> Path:
    """Write ``result`` as JSON (atomically) and its plot next to it (same name, .png)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    if plot is not None:
        plot(result, out.with_suffix(".png"))
    print(f"wrote {out}" + (f" and {out.with_suffix('.png').name}" if plot is not None else ""))
    return out


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
