"""``nbgate-manifest.json``: what one package version holds and where it came from.

Every package version nbgate uploads ends with this file (schema: ``manifest.schema.json``
beside this module). It lists each file's name, size and sha256; the commit, ref, pipeline,
job, merge request and image that made them; the cases with their outcomes and fingerprints;
and, for a release made by ``nbgate promote``, the candidate it came from and when its merge
request was merged.

The manifest is uploaded last, with ``status=default``, after every other file went up
``hidden`` (``reporting.gitlab.packages``): a version without a valid manifest is not complete, and
readers skip it. A file whose bytes differ from its entry is an error, never a skip.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from nbgate.contract.ci_context import CIContext
from nbgate.contract.json_file import JSONFileError, parse_json, schema_violation
from nbgate.contract.model import CaseResult, Fingerprint

MANIFEST_FILE = "nbgate-manifest.json"
SCHEMA = 1
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the version and the field."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, name: str, data: bytes) -> FileEntry:
        return cls(name, len(data), hashlib.sha256(data).hexdigest())

    def problem(self, data: bytes) -> str | None:
        """Why ``data`` is not this file, or None."""
        actual = hashlib.sha256(data).hexdigest()
        if len(data) == self.size and actual == self.sha256:
            return None
        return (f"{self.name}: {len(data)} bytes with sha256 {actual[:12]}…, but the manifest "
                f"records {self.size} bytes with sha256 {self.sha256[:12]}…")


@dataclass(frozen=True)
class ManifestCase:
    id: str
    outcome: str
    fingerprint: Fingerprint | None


@dataclass(frozen=True)
class CandidateRef:
    """The candidate a release was copied from."""

    package: str
    version: str
    commit: str | None


@dataclass(frozen=True)
class Manifest:
    package: str
    version: str
    release: bool
    files: tuple[FileEntry, ...]
    commit: str | None
    ref: str | None
    pipeline: tuple[str | None, str | None]  # (id, url)
    job: tuple[str | None, str | None]  # (id, url)
    mr_iid: str | None
    image: str | None
    cases: tuple[ManifestCase, ...]
    candidate: CandidateRef | None = None
    merged_at: str | None = None
    created_at: str = field(default="", compare=False)

    # -- what readers ask ----------------------------------------------------------------

    def file(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def files_by_name(self) -> dict[str, str]:
        """File name -> sha256."""
        return {f.name: f.sha256 for f in self.files}

    @property
    def passing(self) -> bool:
        """Every case that ran passed, and at least one ran: a failed case beside a passed one
        (CPU passed, GPU failed) makes the whole version not passing."""
        ran = [c for c in self.cases if c.outcome != "skipped"]
        return bool(ran) and all(c.outcome == "passed" for c in ran)

    def fingerprints(self) -> dict[str, Fingerprint | None]:
        """The fingerprint of each case that passed."""
        return {c.id: c.fingerprint for c in self.cases if c.outcome == "passed"}

    def merged_time(self) -> datetime | None:
        return parse_time(self.merged_at)

    # -- writing and reading -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "package": self.package,
            "version": self.version,
            "release": self.release,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
            "commit": self.commit,
            "ref": self.ref,
            "pipeline": {"id": self.pipeline[0], "url": self.pipeline[1]},
            "job": {"id": self.job[0], "url": self.job[1]},
            "mr_iid": self.mr_iid,
            "image": self.image,
            "cases": [{"id": c.id, "outcome": c.outcome,
                       "fingerprint": c.fingerprint.to_dict() if c.fingerprint else None}
                      for c in self.cases],
            "candidate": None if self.candidate is None else {
                "package": self.candidate.package, "version": self.candidate.version,
                "commit": self.candidate.commit},
            "merged_at": self.merged_at,
            "created_at": self.created_at,
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def loads(cls, data: bytes, source: str) -> Manifest:
        """Read and validate a manifest; ManifestError names ``source`` and the field."""
        try:
            raw = parse_json(data, source)  # a manifest nested 200,000 deep is an error too
        except JSONFileError as exc:
            raise ManifestError(str(exc)) from None
        _validate(raw, source)
        candidate = raw["candidate"]
        return cls(
            package=raw["package"], version=raw["version"], release=raw["release"],
            files=tuple(FileEntry(f["name"], f["size"], f["sha256"]) for f in raw["files"]),
            commit=raw["commit"], ref=raw["ref"],
            pipeline=(raw["pipeline"]["id"], raw["pipeline"]["url"]),
            job=(raw["job"]["id"], raw["job"]["url"]),
            mr_iid=raw["mr_iid"], image=raw["image"],
            cases=tuple(ManifestCase(c["id"], c["outcome"],
                                     Fingerprint.from_dict(c["fingerprint"])
                                     if c["fingerprint"] else None) for c in raw["cases"]),
            candidate=CandidateRef(**candidate) if candidate else None,
            merged_at=raw["merged_at"], created_at=raw.get("created_at") or "",
        )


def build_manifest(
    package: str,
    version: str,
    files: Mapping[str, bytes],
    *,
    release: bool,
    made_by: CIContext,
    image: str | None,
    mr_iid: str | None,
    cases: Sequence[CaseResult] | Sequence[ManifestCase],
    candidate: CandidateRef | None = None,
    merged_at: str | None = None,
    now: datetime | None = None,
) -> Manifest:
    """The manifest of a version holding ``files``, made by the job ``made_by`` describes."""
    listed = tuple(ManifestCase(c.case_id, c.outcome, c.fingerprint)
                   if isinstance(c, CaseResult) else c for c in cases)
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Manifest(
        package, version, release, tuple(FileEntry.of(n, d) for n, d in files.items()),
        made_by.commit_sha, made_by.ref, (made_by.pipeline_id, made_by.pipeline_url),
        (made_by.job_id, made_by.job_url), mr_iid, image, listed, candidate, merged_at, stamp)


def parse_time(text: str | None) -> datetime | None:
    """GitLab's ISO times (``2025-01-01T00:00:05.000Z``) as aware datetimes."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _validate(data: Any, source: str) -> None:
    violation = schema_violation(data, _schema())
    if violation is not None:
        raise ManifestError(f"{source}: {violation}")


@cache
def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
