"""Benchmark `reactgen build`: cold and warm (no-change) builds of N reactor definitions.

Usage: python bench/generator_build.py [--count 100] [--schemas 10]

Prints a markdown table. Cold = empty output folder and empty model cache; cached = empty output
folder but warm model cache (what a CI runner with a cache sees); warm = nothing changed since the
last build (the common case while editing handlers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_definitions(root: Path, count: int, schemas: int) -> None:
    """Write ``count`` reactor definitions over ``schemas`` collections."""
    root.mkdir(parents=True)
    for index in range(schemas):
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"Thing{index}",
            "type": "object",
            "properties": {
                "_id": {"type": "string"},
                "status": {"type": "string", "enum": ["new", "done"]},
                "amount": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                    },
                },
            },
            "required": ["_id"],
        }
        (root / f"things{index}.schema.json").write_text(json.dumps(schema), encoding="utf-8")
    for index in range(count):
        collection = index % schemas
        (root / f"reactor{index}.reactor.yaml").write_text(
            f"collection: things{collection}\n"
            f"schema: {{$ref: things{collection}.schema.json}}\n"
            "trigger:\n"
            f"  filter: {{status: new, amount: {{$gt: {index}}}}}\n"
            "  watch: [status, amount, lines.sku]\n"
            "policies:\n"
            "  debounce: {delay: 1s, maxWait: 10s}\n"
            "  retry: {strategy: exponential, min: 1s, max: 1h}\n",
            encoding="utf-8",
        )


def timed_build(workdir: Path) -> float:
    """Seconds for one `reactgen build` in a fresh interpreter (as a user runs it)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "generator", "build", "defs", "--out", "app"],
        cwd=workdir,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return time.perf_counter() - started


def in_process_warm(workdir: Path, repeats: int) -> float:
    """Median seconds of the up-to-date check inside one process (excludes interpreter start)."""
    sys.path.insert(0, str(REPO))
    from generator.build import build

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = build(workdir / "defs", workdir / "app", workdir, None)
        times.append(time.perf_counter() - started)
        assert result.up_to_date
    return statistics.median(times)


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--schemas", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_definitions(workdir / "defs", args.count, args.schemas)
        cold = timed_build(workdir)
        warm = timed_build(workdir)
        warm_in_process = in_process_warm(workdir, 5)
        shutil.rmtree(workdir / "app")
        cached = timed_build(workdir)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"\n{args.count} definitions over {args.schemas} collections\n")
    print("| build | seconds |")
    print("|---|---|")
    print(f"| cold (no output, no model cache) | {cold:.2f} |")
    print(f"| output deleted, model cache warm | {cached:.2f} |")
    print(f"| no change (new process, incl. interpreter start) | {warm:.2f} |")
    print(f"| no change (in process) | {warm_in_process:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
