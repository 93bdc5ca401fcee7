"""Run the benchmarks: `python -m benchmarks [NAME …]`. Results are printed and saved to bench-results/NAME.json.

A benchmark module is `benchmarks/bench_<name>.py` with `def run(args: list[str]) -> dict[str, object]`; it prints its
own table (measured numbers and ratios against the peer measured in the same run) and returns the numbers.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(
        m.name[len("bench_") :] for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    wanted = [a for a in argv if not a.startswith("-")] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"error: unknown benchmark {unknown[0]!r}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    out_dir = Path("bench-results")
    out_dir.mkdir(exist_ok=True)
    flags = [a for a in argv if a.startswith("-")]
    for name in wanted:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        result = module.run(flags)
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
