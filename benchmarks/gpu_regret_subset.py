"""The planner's regret on a GPU over the calibration cases whose every timed candidate ran as it would now.

``benchmarks/results-gpu.json`` keeps the timings of ``calibrate.py --device cuda`` from before the planner
dropped the CPU's cache cliffs on CUDA (``tensortrain.contraction.machine.Machine.cache_cliffs``). Some
candidates then ran differently (inference sweeps in chunks of rows, W over 32 MiB built in blocks); the cases
with none of those are comparable. For them this prints the regret of the current CUDA constants (the measured time of the plan they
price lowest over the fastest timed plan) and of a least-squares fit, pricing with and without the cliffs.

    .venv/bin/python benchmarks/gpu_regret_subset.py
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibrate as cal  # noqa: E402

from tensortrain.contraction import cost  # noqa: E402
from tensortrain.contraction import machine as hw  # noqa: E402


def ran_as_now(r: dict[str, Any]) -> bool:
    """Whether this timed candidate executed as it does now on CUDA (no chunks, no blocked build)."""
    dims = tuple(tuple(v) for v in r["dims"])
    kind, direction, groups = r["program"]
    item = r.get("item", 4)
    if kind == "sweep" and not r["grad"]:
        return r["batch"] <= cost.chunking(dims, tuple(tuple(g) for g in groups), direction, item, True)[1]
    if kind == "full":
        return item * cost.prod(dims[0]) * cost.prod(dims[1]) <= hw.BLOCKED_ABOVE
    return True


def main() -> int:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results-gpu.json")
    with open(path) as f:
        rows = json.load(f)["calibration_cliffs_on"]["rows"]

    def key(r: dict[str, Any]) -> tuple:
        return r["case"], r["batch"], r["mode"]

    changed = {key(r) for r in rows if not ran_as_now(r)}
    sub = [dict(r) for r in rows if key(r) not in changed]
    print(
        f"{len({key(r) for r in rows})} cases; {len({key(r) for r in sub})} with every candidate run as now"
    )
    now = hw.MACHINES["cuda"]
    for cliffs in (True, False):
        hw.MACHINES["cuda"] = now._replace(cache_cliffs=cliffs)
        cal.refeature(sub, "cuda")
        fitted = cal.to_machine(cal.nnls_relative(sub), "cuda")
        for label, m in (("current constants", hw.MACHINES["cuda"]), ("least-squares fit", fitted)):
            reg = [r["regret"] for r in cal.regret(sub, m)]
            geo = math.exp(sum(map(math.log, reg)) / len(reg))
            print(
                f"priced {'with' if cliffs else 'without'} the cliffs, {label}: {geo:.3f}x, worst {max(reg):.2f}x"
            )
    hw.MACHINES["cuda"] = now
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
