"""Run the benchmarks and update ``bench/RESULTS.md``.

``python -m bench [--quick] [NAME ...]`` runs every ``bench/bench_*.py`` (or the named ones).
Each module exposes ``run(quick: bool) -> str`` returning a Markdown section (starting with a
``## `` heading). Its section in RESULTS.md is replaced between ``<!-- bench:NAME -->`` markers,
so running one benchmark keeps the others' results and any text written around them.

Benchmarks measure; they never assert. Numbers depend on the machine: compare ratios measured
side by side in one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "RESULTS.md"
HEADER = """# Benchmark results

Written by `python -m bench` (add `--quick` for a short run). Each section is replaced by its
own benchmark; text outside the markers is kept. Ratios come from one run, side by side.
"""


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def update(text: str, name: str, section: str) -> str:
    """``text`` with the section for ``name`` replaced (or appended)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all: {discover()})")
    parser.add_argument("--quick", action="store_true", help="fewer iterations and rows")
    args = parser.parse_args(argv)
    names = args.names or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {discover()}")
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        started = time.perf_counter()
        section = module.run(quick=args.quick)
        took = time.perf_counter() - started
        stamp = (
            f"\n\n_{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{'quick, ' if args.quick else ''}{took:.0f} s, Python {platform.python_version()}, "
            f"{platform.machine()}_"
        )
        print(section, flush=True)
        # Re-read right before writing: other benchmarks may have written meanwhile.
        text = RESULTS.read_text() if RESULTS.exists() else HEADER
        RESULTS.write_text(update(text, name, section + stamp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
