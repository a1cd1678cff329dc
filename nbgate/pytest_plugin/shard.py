"""Splitting the selected cases into N shards (``--nbgate-shard K/N``, GitLab's ``parallel: N``).

Pure logic, standard library only: the pytest side lives in ``nbgate.pytest_plugin.shard_plugin``.

Every shard job computes the same split on its own, with no coordinator, so the split must be
a function of what every job sees alike: the selected case ids, their recorded durations and N.
The split is

1. **heavy cases first** (a case longer than 1/20 of a shard's fair share): each goes to the
   first shard in its own rendezvous-hash order that still has room under the fair share, else
   to the least loaded shard;
2. **the rest in hash order, cut into N consecutive runs**: the light cases are ordered by a
   hash of their id (a fixed ring, independent of which other cases exist) and cut into
   consecutive runs whose durations fill every shard up to one common level ("water filling"
   on top of the heavy cases). Each case goes to the run holding the midpoint of its duration.

Why this shape: a greedy longest-first packing balances as well, but inserting one case can
move most others, because every later placement sees different loads. Here a new light case
only shifts the N-1 cut points by about its own duration, so only the cases sitting next to a
cut move; a new heavy case moves about its own duration's worth of light cases. The balance is
within about the longest light case (at most 1/20 of a share) whatever the skew.

Durations come from a previous ``metrics.json`` (``cases[].duration_s``; the case id is
``case_id`` in schema 1 and ``id`` in later schemas). Unknown cases count as the mean of the
known ones; with no known durations every case counts 1, which splits by count.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from nbgate.contract.json_file import read_json

# A case longer than this share of a shard's fair share is placed on its own before the cut:
# cutting never splits a case, so one long case next to a cut could unbalance two shards by
# up to its own length.
HEAVY_SHARE = 1 / 20
# A recorded duration above this (about 115 days) is no measurement: summing a few of them near
# the float limit (1e308) overflows, and one would leave every other case on one shard.
MAX_DURATION_S = 1e7
MAX_SHARDS = 1000
OFF = ("off", "none", "no")
# ASCII digits only: \d and int() also take other scripts' digits ("٢/٣"), which no CI sets.
_SPEC = re.compile(r"^[ \t]*([0-9]+)[ \t]*/[ \t]*([0-9]+)[ \t]*$")
_RUN_SUFFIX = re.compile(r"#\d+$")  # run_notebook's second and later runs in one test


class ShardError(ValueError):
    """A shard setting that cannot be used; the message names where it came from."""


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based, as GitLab's CI_NODE_INDEX) of ``total``."""

    index: int
    total: int

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_SHARDS:
            raise ShardError(f"the number of shards must be 1 to {MAX_SHARDS}, not {self.total}")
        if not 1 <= self.index <= self.total:
            raise ShardError(f"shard {self.index} does not exist in 1..{self.total} "
                             "(shards count from 1, as GitLab's CI_NODE_INDEX)")

    @property
    def name(self) -> str:
        """The shard's own folder name under the reports folder: ``shard-2-of-4``."""
        return f"shard-{self.index}-of-{self.total}"

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    @classmethod
    def parse(cls, text: str, where: str) -> Shard:
        match = _SPEC.match(text)
        if not match:
            raise ShardError(f"{where}: {text!r} is not K/N (for example 2/4), nor 'off'")
        try:
            return cls(int(match.group(1)), int(match.group(2)))
        except ShardError as exc:
            raise ShardError(f"{where}: {exc}") from None


def shard_from(option: str | None, environ: Mapping[str, str]) -> tuple[Shard | None, str]:
    """The shard this run is, and where that came from; ``None`` runs every selected case.

    First ``--nbgate-shard`` (``option``), then ``NBGATE_SHARD``, then GitLab's
    ``CI_NODE_INDEX``/``CI_NODE_TOTAL`` when both are set (a ``parallel: N`` job). ``off`` in
    the first two ignores CI_NODE_*: N parallel jobs that all run the same cases (N workers of
    one Optuna study). 1/N with N = 1 is no split at all.
    """
    for value, where in ((option, "--nbgate-shard"), (environ.get("NBGATE_SHARD"), "NBGATE_SHARD")):
        if value is None or not value.strip():
            continue
        if value.strip().lower() in OFF:
            return None, where
        shard = Shard.parse(value, where)
        return (shard if shard.total > 1 else None), where
    index, total = environ.get("CI_NODE_INDEX", ""), environ.get("CI_NODE_TOTAL", "")
    if not (index.strip() and total.strip()):
        return None, ""
    where = "CI_NODE_INDEX/CI_NODE_TOTAL"
    shard = Shard.parse(f"{index}/{total}", f"{where} ({index!r}/{total!r})")
    return (shard if shard.total > 1 else None), where


# -- durations ------------------------------------------------------------------------------


def durations_from_metrics(document: Any, ignored: list[str] | None = None) -> dict[str, float]:
    """Case id -> seconds from a metrics.json document; entries without a usable duration
    (skipped cases record 0, a damaged file anything) are left out rather than guessed. Numbers
    that are no duration (not finite, or above ``MAX_DURATION_S``) are left out too, and
    described in ``ignored`` ("<case id>: 1e+308 s") so that the caller can warn."""
    cases = document.get("cases") if isinstance(document, Mapping) else None
    durations: dict[str, float] = {}
    for case in cases if isinstance(cases, list) else ():
        if not isinstance(case, Mapping) or case.get("outcome") == "skipped":
            continue
        case_id = case.get("id", case.get("case_id"))
        seconds = case.get("duration_s")
        if not isinstance(case_id, str) or isinstance(seconds, bool):
            continue
        if not isinstance(seconds, int | float) or seconds == 0:
            continue
        if not (0 < seconds <= MAX_DURATION_S):  # NaN fails this too
            if ignored is not None:
                ignored.append(f"{case_id}: {seconds:g} s")
            continue
        # A test that ran several notebooks records one result each ("<node id>#2", ...); the
        # shard runs the test, so its duration is their sum.
        key = _RUN_SUFFIX.sub("", case_id)
        durations[key] = durations.get(key, 0.0) + float(seconds)
    return durations


def read_durations(path: Path, ignored: list[str] | None = None) -> dict[str, float]:
    """``durations_from_metrics`` of a file; ``ValueError`` (``JSONFileError``) when
    unreadable."""
    return durations_from_metrics(read_json(path), ignored)


def ignored_note(ignored: list[str]) -> str:
    """What the shard line adds when recorded durations were left out."""
    if not ignored:
        return ""
    shown = ", ".join(ignored[:3]) + (f" and {len(ignored) - 3} more" if len(ignored) > 3 else "")
    return (f"; ignored {len(ignored)} recorded duration(s) that are not a number of seconds "
            f"up to {MAX_DURATION_S:g}: {shown}")


# -- the split ------------------------------------------------------------------------------


def _hash(text: str) -> int:
    # blake2b, not hash(): the same value in every process and on every machine.
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def weights_for(ids: Sequence[str], durations: Mapping[str, float]) -> dict[str, float]:
    """Each case's weight: its recorded duration, else the mean of the known ones, else 1."""
    known = [durations[i] for i in ids if i in durations]
    default = math.fsum(known) / len(known) if known else 1.0
    return {i: durations.get(i, default) for i in ids}


def _water_fill(loads: Sequence[float], amount: float) -> list[float]:
    """How much of ``amount`` each shard takes so that they all end at one level (a shard
    already above that level takes nothing)."""
    order = sorted(loads)
    level = order[-1]
    running = 0.0
    for count, load in enumerate(order, 1):
        running += load
        candidate = (amount + running) / count
        if count == len(order) or candidate <= order[count]:
            level = candidate
            break
    return [max(0.0, level - load) for load in loads]


def assign(ids: Iterable[str], durations: Mapping[str, float], total: int) -> dict[str, int]:
    """Each case id's shard, 0-based, for ``total`` shards. Deterministic in its inputs (not in
    their order): every shard job computes the same mapping."""
    unique = sorted(set(ids), key=lambda i: (_hash(i), i))
    if total < 1:
        raise ShardError(f"the number of shards must be at least 1, not {total}")
    if total == 1:
        return dict.fromkeys(unique, 0)
    weight = weights_for(unique, durations)
    share = math.fsum(weight.values()) / total
    loads = [0.0] * total
    shard_of: dict[str, int] = {}

    heavy = sorted((i for i in unique if weight[i] > share * HEAVY_SHARE),
                   key=lambda i: (-weight[i], _hash(i), i))
    for case in heavy:
        # Rendezvous (highest random weight) order: each case has its own preferred shards, so
        # adding or removing another heavy case rarely changes where this one goes.
        ranked = sorted(range(total), key=lambda k: (_hash(f"{k}\0{case}"), k), reverse=True)
        room = [k for k in ranked if loads[k] + weight[case] <= share]
        chosen = room[0] if room else min(range(total), key=lambda k: (loads[k], k))
        shard_of[case] = chosen
        loads[chosen] += weight[case]

    light = [i for i in unique if i not in shard_of]  # already in hash order
    bounds = list(accumulate(_water_fill(loads, math.fsum(weight[i] for i in light))))
    position, shard = 0.0, 0
    for case in light:
        middle = position + weight[case] / 2
        while shard < total - 1 and middle >= bounds[shard]:
            shard += 1
        shard_of[case] = shard
        position += weight[case]
    return shard_of


def split(ids: Sequence[str], durations: Mapping[str, float], total: int) -> list[list[str]]:
    """The ids of each shard, in the order given (pytest's collection order)."""
    shard_of = assign(ids, durations, total)
    shards: list[list[str]] = [[] for _ in range(total)]
    for case in ids:
        shards[shard_of[case]].append(case)
    return shards


def fingerprint(shard_of: Mapping[str, int]) -> str:
    """A short digest of a whole split. Every shard of one pipeline must print the same one: a
    different one means the jobs saw different cases or durations, so cases may be run twice
    or not at all (the shard.json files let a merge check that)."""
    digest = hashlib.sha256()
    for case in sorted(shard_of):
        digest.update(f"{case}\0{shard_of[case]}\n".encode())
    return digest.hexdigest()[:12]

