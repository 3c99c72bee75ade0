"""``python -m study.bench {overhead,scale,search,epoch,data}``: measure, print a table, write JSON.

``epoch`` needs torch, MONAI, nibabel and Optuna only (no Ray, pandas or pyarrow), so it runs
on a GPU machine that has PyTorch and a few pure-Python wheels; so does this module.
"""

from __future__ import annotations

import sys

from study.cli import before_loading, read

if __name__ == "__main__":
    before_loading("study.bench")  # --help and --version answered before torch loads

import argparse
import json
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from study.config import StudyError


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows of the subcommand ``args.command``."""
    if args.command == "epoch":
        from study.bench import epoch

        cuda = torch.cuda.is_available()
        sizes = (
            args.sizes.split(",") if args.sizes else ["demo", "paper" if cuda else "paper-net-small-input"]
        )
        chosen = args.variants.split(",") if args.variants else None
        return epoch.run(sizes, args.steps or (20 if cuda else 3), args.threads, chosen)
    if args.command == "search":
        from study.bench import search

        samplers = args.samplers.split(",")
        if unknown := [n for n in samplers if n not in ("tpe", "gp", "nsga2")]:
            raise StudyError(f"--samplers: unknown {', '.join(unknown)}; choose from tpe, gp, nsga2")
        try:
            in_flight = [int(k) for k in args.in_flight.split(",")]
        except ValueError:
            in_flight = [0]
        if min(in_flight) < 1:
            raise StudyError(f"--in-flight {args.in_flight}: positive whole numbers, e.g. 2,8,16")
        return search.run(args.strategies.split(","), args.seeds, args.budget, in_flight, samplers)
    if args.command == "scale":
        from study.bench import scale

        if args.sampler not in ("tpe", "gp", "nsga2", "random"):
            raise StudyError(f"--sampler {args.sampler}: choose from tpe, gp, nsga2, random")
        try:
            sizes = [int(n) for n in args.trials.split(",")]
        except ValueError:
            sizes = [0]
        if min(sizes) < 2 or args.slots < 1:
            raise StudyError(f"--trials {args.trials} --slots {args.slots}: at least 2 trials, 1 slot")
        bare = args.bare.split(",")
        if unknown := [b for b in bare if b not in scale.BARE]:
            raise StudyError(f"--bare: unknown {', '.join(unknown)}; choose from {', '.join(scale.BARE)}")
        return scale.run(sizes, args.slots, args.sampler, bare)
    if args.command == "data":
        from study.bench import data

        return data.run()
    from study.bench import overhead

    strategies = args.strategies.split(",") if args.strategies else None
    return overhead.run(args.preset, strategies, args.num_samples, args.config)


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as aligned text columns (numbers to 4 significant digits)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> str:
        return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True)) for line in cells)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 with one line on a user's error)."""
    args = read("study.bench", argv)
    out = args.out or Path("runs") / "bench" / f"{args.command}-{datetime.now():%Y%m%d-%H%M%S}.json"
    try:
        rows = measure(args)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(rows))
    command = " ".join(sys.argv[1:] if argv is None else argv)
    record = {"command": f"python -m study.bench {command}", "machine": machine(), "rows": rows}
    if args.command == "scale":
        from study.bench import scale

        record |= scale.summary(rows)
        print("\n" + ", ".join(f"{k} {v:.3g}" for k, v in scale.summary(rows).items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(record, indent=1, default=str))
    os.replace(partial, out)  # never a half-written table
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
