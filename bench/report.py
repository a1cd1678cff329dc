"""The markdown report: budget ratios first, then every variant's timings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.timing import Samples


@dataclass(frozen=True)
class Comparison:
    label: str
    numerator: str  # variant keys; the ratio is numerator / denominator
    denominator: str
    budget: float | None = None  # None: reported for information only
    at_least: bool = False  # a speedup must reach the budget; a cost ratio must stay under it

    def ratio(self, samples: Mapping[str, Samples]) -> tuple[float, float] | None:
        """(ratio of medians, ratio of minimums); None when a side has no sample."""
        num, den = samples[self.numerator], samples[self.denominator]
        if not (num.measured and den.measured):
            return None
        return num.median / den.median, num.min / den.min

    def verdict(self, ratio: float) -> str:
        if self.budget is None:
            return "info"
        holds = ratio >= self.budget if self.at_least else ratio <= self.budget
        return "holds" if holds else "MISSED"

    def budget_text(self) -> str:
        if self.budget is None:
            return "—"
        return f"{'≥' if self.at_least else '≤'} {self.budget:g}"


@dataclass(frozen=True)
class Probe:
    items: int
    at_plugin_load: tuple[str, ...]
    during_collection: tuple[str, ...]


def render(
    comparisons: Sequence[Comparison],
    samples: Mapping[str, Samples],
    labels: Mapping[str, str],
    probe: Probe | None,
    context: Mapping[str, Mapping[str, str]],
) -> str:
    lines = ["# nbgate benchmark results", "",
             "Written by `make bench` (`python -m bench`); every time is wall-clock seconds of "
             "whole processes, as a user would wait for them. Ratios use medians; the ratio "
             "of minimums is beside it.",
             ""]
    lines += ["| comparison | ratio (median) | ratio (min) | budget | verdict |",
              "| --- | ---: | ---: | --- | --- |"]
    for comparison in comparisons:
        ratios = comparison.ratio(samples)
        if ratios is None:
            lines.append(f"| {comparison.label} | — | — | {comparison.budget_text()} | "
                         "not measured (time limit) |")
            continue
        by_median, by_min = ratios
        lines.append(
            f"| {comparison.label} | {by_median:.2f} | {by_min:.2f} | "
            f"{comparison.budget_text()} | {comparison.verdict(by_median)} |"
        )
    if probe is not None:
        heavy = ", ".join(probe.during_collection) or "none"
        lines.append(
            f"| heavy modules imported while collecting {probe.items} cases | {heavy} | | none | "
            f"{'holds' if not probe.during_collection else 'MISSED'} |"
        )
        lines += ["", f"Heavy modules that installed plugins import when pytest starts (before "
                      f"collection, the same in every pytest variant): "
                      f"{', '.join(probe.at_plugin_load) or 'none'}."]
    lines.append("")
    lines += ["## Timings (s)", "", "| variant | min | median | samples |",
              "| --- | ---: | ---: | --- |"]
    for key, sample in samples.items():
        if not sample.measured:
            lines.append(f"| {labels[key]} | — | — | none (time limit) |")
            continue
        runs = " ".join(f"{s:.2f}" for s in sample.seconds)
        lines.append(f"| {labels[key]} | {sample.min:.2f} | {sample.median:.2f} | {runs} |")
    for title, values in context.items():
        lines += ["", f"## {title}", ""]
        lines += [f"- {name}: {value}" for name, value in values.items()]
    return "\n".join(lines) + "\n"
