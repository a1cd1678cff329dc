"""The one line every merged report says when shards are missing:
"incomplete: shard 2/3 missing, 10 cases not run" (summary.md, metrics.txt, the comment)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MissingShard:
    """A shard whose job left no reports; metrics.json's ``missing_shards`` entry."""

    job: str  # CI_JOB_NAME without " K/N"; "" outside CI
    index: int
    total: int
    cases: tuple[str, ...]  # its case ids (empty when an older shard.json did not say)
    count: int  # how many cases it owned

    @property
    def name(self) -> str:
        where = f"shard {self.index}/{self.total}"
        return f"{self.job} {where}" if self.job else where

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "index": self.index, "total": self.total,
                "cases": list(self.cases)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MissingShard:
        cases = tuple(data.get("cases") or ())
        return cls(data.get("job") or "", int(data["index"]), int(data["total"]), cases,
                   len(cases))


def incomplete_line(missing: Sequence[MissingShard]) -> str | None:
    """"incomplete: shard 2/3 missing, 10 cases not run", or None when nothing is missing."""
    if not missing:
        return None
    count = sum(shard.count for shard in missing)
    noun = "case" if count == 1 else "cases"
    return f"incomplete: {', '.join(s.name for s in missing)} missing, {count} {noun} not run"
