"""The markdown report: a plain verdict, every comparison, then every variant's timings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from bench.measure import IDLE_HELPER_BUDGET_MB, Probe, Samples

Kind = Literal["ratio", "added", "per item"]
HELPER_ROW = "idle MLflow helper, resident memory (MB)"


@dataclass(frozen=True)
class Comparison:
    """One row: how variant ``numerator`` compares with ``denominator``, and its budget.

    ``kind``:
    - "ratio": numerator / denominator (a cost ratio, or a speedup with ``at_least``);
    - "added": numerator - denominator, in seconds (what a feature adds to a session);
    - "per item": what each item costs above its tool's fixed start-up: (numerator -
      ``baselines[0]``) / ``items[0]``, divided by (denominator - ``baselines[1]``) /
      ``items[1]``. Each baseline is a bare run with that tool's own plugins loaded.
    """

    label: str
    numerator: str  # variant keys
    denominator: str
    budget: float | None = None  # None: reported for information only
    at_least: bool = False  # a speedup must reach the budget; a cost must stay under it
    kind: Kind = "ratio"
    baselines: tuple[str, str] | None = None  # "per item" only
    items: tuple[int, int] = (1, 1)  # "per item" only

    @property
    def keys(self) -> set[str]:
        return {self.numerator, self.denominator} | set(self.baselines or ())

    def value(self, samples: Mapping[str, Samples]) -> tuple[float, float] | None:
        """(from the medians, from the minimums); None when a side has no sample."""
        if not all(samples[key].measured for key in self.keys):
            return None
        num, den = samples[self.numerator], samples[self.denominator]
        if self.kind == "added":
            return num.median - den.median, num.min - den.min
        if self.kind == "per item":
            assert self.baselines is not None
            num_base, den_base = (samples[key] for key in self.baselines)
            by_median = _per_item(
                (num.median, num_base.median), (den.median, den_base.median), self.items)
            by_min = _per_item((num.min, num_base.min), (den.min, den_base.min), self.items)
            if by_median is None or by_min is None:
                return None
            return by_median, by_min
        return num.median / den.median, num.min / den.min

    def verdict(self, value: float) -> str:
        if self.budget is None:
            return "info"
        holds = value >= self.budget if self.at_least else value <= self.budget
        return "holds" if holds else "MISSED"

    @property
    def unit(self) -> str:
        return " s" if self.kind == "added" else "×"

    def budget_text(self) -> str:
        if self.budget is None:
            return "—"
        return f"{'≥' if self.at_least else '≤'} {self.budget:g}{self.unit}"


def _per_item(
    num: tuple[float, float], den: tuple[float, float], items: tuple[int, int]
) -> float | None:
    """``num``/``den``: (the run, its bare baseline)."""
    above = den[0] - den[1]
    if above <= 0:  # the baseline took as long: nothing to divide by
        return None
    return ((num[0] - num[1]) / items[0]) / (above / items[1])


def render(
    comparisons: Sequence[Comparison],
    samples: Mapping[str, Samples],
    labels: Mapping[str, str],
    probe: Probe | None,
    context: Mapping[str, Mapping[str, str]],
    helper_mb: float | None = None,
) -> str:
    rows, missed, unmeasured = [], [], []
    for comparison in comparisons:
        values = comparison.value(samples)
        if values is None:
            sampled = all(samples[key].measured for key in comparison.keys)
            why = "baseline as slow: noise" if sampled else "time limit"
            rows.append(f"| {comparison.label} | — | — | {comparison.budget_text()} | "
                        f"not measured ({why}) |")
            if comparison.budget is not None:
                unmeasured.append(f"{comparison.label} ({why})")
            continue
        by_median, by_min = values
        verdict = comparison.verdict(by_median)
        if verdict == "MISSED":
            missed.append(f"{comparison.label} ({by_median:.2f}{comparison.unit}, budget "
                          f"{comparison.budget_text()})")
        rows.append(f"| {comparison.label} | {by_median:.2f} | {by_min:.2f} | "
                    f"{comparison.budget_text()} | {verdict} |")
    if probe is not None:
        heavy = ", ".join(probe.during_collection) or "none"
        rows.append(f"| heavy modules imported while collecting {probe.items} cases | {heavy} | "
                    f"| none | {'holds' if not probe.during_collection else 'MISSED'} |")
        if probe.during_collection:
            missed.append(f"heavy modules imported while collecting ({heavy})")

    if helper_mb is not None:
        holds = helper_mb <= IDLE_HELPER_BUDGET_MB
        rows.append(f"| {HELPER_ROW} | {helper_mb:.0f} | | ≤ {IDLE_HELPER_BUDGET_MB:g} MB | "
                    f"{'holds' if holds else 'MISSED'} |")
        if not holds:
            missed.append(f"{HELPER_ROW} ({helper_mb:.0f} MB, budget ≤ "
                          f"{IDLE_HELPER_BUDGET_MB:g} MB: so the idle helper stops one minute "
                          "after its last session by default)")

    lines = ["# nbgate benchmark results", "",
             "Written by `make bench` (`python -m bench`); every time is wall-clock seconds of "
             "whole processes, as a user would wait for them. The budget rows measure nbgate as "
             "a user gets it: MLflow tracking on, to the local sqlite store. Values come from "
             "the medians; the value from the minimums is beside it. `×` rows are ratios, "
             "`s` rows seconds added.", ""]
    if missed:
        lines += ["**Budgets missed:** " + "; ".join(missed) + ".", ""]
    else:
        lines += ["**Every measured budget holds.**", ""]
    if unmeasured:
        lines += ["**Budgets not measured:** " + "; ".join(unmeasured) + ".", ""]
    lines += ["| comparison | value (median) | value (min) | budget | verdict |",
              "| --- | ---: | ---: | --- | --- |", *rows]
    if probe is not None:
        lines += ["", "Heavy modules imported when pytest starts with nbgate's plugins (before "
                      "collection): "
                      f"{', '.join(probe.at_plugin_load) or 'none'}."]
    lines += ["", "## Timings (s)", "", "| variant | min | median | samples |",
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
