"""Benchmark results as rows, ratios, a Markdown table and JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

from benchmarks.configs import MAIN

PEERS = ("torch", "flax")


@dataclasses.dataclass(frozen=True)
class Row:
    """The medians of one framework on one configuration."""

    config: str
    framework: str  # "jrnn", "jrnn-scan", "jrnn-remat", "torch" or "flax"
    forward_runs_ms: tuple[float, ...]  # one time per repetition
    train_runs_ms: tuple[float, ...]
    forward_gflop: float  # matmul GFLOP of one forward pass (a train step counts three)
    compile_s: tuple[float, float] | None = None  # forward, train
    memory_bytes: tuple[int, int] | None = None  # forward, train
    max_diff: float | None = None  # max |output - torch output| (jrnn rows)

    @property
    def forward_ms(self) -> float:
        return statistics.median(self.forward_runs_ms)

    @property
    def train_ms(self) -> float:
        return statistics.median(self.train_runs_ms)


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything one run measured."""

    meta: dict[str, Any]  # machine, versions, settings, matmul peak
    tolerance: float  # for the jrnn = torch output check
    configs: dict[str, str]  # name -> description of the shapes run
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def ratio(self, row: Row, peer: str) -> tuple[float, float] | None:
        """``row``'s forward and train time over ``peer``'s on the same config (None: no peer)."""
        for other in self.rows:
            if other.config == row.config and other.framework == peer:
                return row.forward_ms / other.forward_ms, row.train_ms / other.train_ms
        return None

    def check_passed(self, row: Row) -> bool | None:
        return None if row.max_diff is None else row.max_diff <= self.tolerance

    def main_configs(self) -> list[str]:
        """The configs of :data:`MAIN` that jrnn ran on."""
        ran = {row.config for row in self.rows if row.framework == "jrnn"}
        return [name for name in MAIN if name in ran]

    def geomeans(self) -> dict[str, tuple[float, float]]:
        """jrnn/peer geometric means (forward, train) over :meth:`main_configs`."""
        means = {}
        for peer in PEERS:
            ratios = [
                self.ratio(row, peer)
                for row in self.rows
                if row.framework == "jrnn" and row.config in self.main_configs()
            ]
            if ratios and None not in ratios:
                means[peer] = tuple(
                    math.exp(sum(math.log(r[i]) for r in ratios) / len(ratios)) for i in (0, 1)
                )
        return means

    def to_json(self) -> dict[str, Any]:
        rows = [
            {
                **dataclasses.asdict(row),
                "forward_ms": row.forward_ms,
                "train_ms": row.train_ms,
                **{f"vs_{peer}": self.ratio(row, peer) for peer in PEERS},
                "check_passed": self.check_passed(row),
            }
            for row in self.rows
        ]
        return {
            "meta": self.meta,
            "tolerance": self.tolerance,
            "configs": self.configs,
            "rows": rows,
            "geomeans": {
                peer: {"configs": self.main_configs(), "forward": f, "train": t}
                for peer, (f, t) in self.geomeans().items()
            },
            "notes": self.notes,
        }

    def markdown(self) -> str:
        peak = self.meta["matmul_peak_gflops"]

        def rate(gflop: float, ms: float) -> str:
            achieved = gflop / ms * 1e3
            return f"{achieved:.0f} ({achieved / peak:.0%})"

        def pair(values: tuple[float, float] | None, fmt: str) -> str:
            return "–" if values is None else "/".join(format(v, fmt) for v in values)

        def check(row: Row) -> str:
            passed = self.check_passed(row)
            return "" if passed is None else f"{'ok' if passed else 'FAIL'} {row.max_diff:.0e}"

        head = (
            "| config | framework | fwd ms | train ms | fwd ×torch | train ×torch | fwd ×flax "
            "| train ×flax | fwd GFLOP/s (% peak) | train GFLOP/s (% peak) | compile s fwd/train "
            "| memory MB fwd/train | output = torch |"
        )
        lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
        for row in self.rows:
            ratios = [self.ratio(row, peer) if row.framework != peer else None for peer in PEERS]
            cells = [
                row.config,
                row.framework,
                f"{row.forward_ms:.1f}",
                f"{row.train_ms:.1f}",
                *("" if r is None else f"{r[i]:.2f}" for r in ratios for i in (0, 1)),
                rate(row.forward_gflop, row.forward_ms),
                rate(3 * row.forward_gflop, row.train_ms),
                pair(row.compile_s, ".1f"),
                pair(
                    None if row.memory_bytes is None else [b / 2**20 for b in row.memory_bytes],
                    ".1f",
                ),
                check(row),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        means = self.geomeans()
        summary = [
            f"- jrnn/{peer}: forward {f:.2f}x, train step {t:.2f}x"
            for peer, (f, t) in means.items()
        ]
        legend = [f"- `{name}`: {described}" for name, described in self.configs.items()]
        meta = [f"- {key}: {value}" for key, value in self.meta.items()]
        parts = [
            "\n".join(lines),
            f"Geometric means over {', '.join(self.main_configs())}:\n" + "\n".join(summary)
            if summary
            else "",
            "Configurations (float32):\n" + "\n".join(legend),
            "Run:\n" + "\n".join(meta),
            "Notes:\n" + "\n".join(f"- {note}" for note in self.notes) if self.notes else "",
        ]
        return "\n\n".join(part for part in parts if part) + "\n"

    def write(self, path: Path) -> None:
        """Write the Markdown table to ``path`` and the JSON beside it (``.json``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown())
        path.with_suffix(".json").write_text(json.dumps(self.to_json(), indent=2) + "\n")
