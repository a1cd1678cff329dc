"""``nbgate publish mr``: one sticky comment per kind (train, score) on the merge request.

The comment is created once and edited in place on every later pipeline. It is found by its
marker on the first line among ALL the merge request's notes (every page: a busy MR has more
than one), skipping system notes and, when ``GET /user`` tells us who we are, other people's
notes. When several match (left by an earlier lost answer), the newest is kept and ours among
the others are deleted, so duplicates heal instead of piling up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from gitlab.exceptions import GitlabError

from nbgate.contract.baselines import ENV_VAR as BASELINE_ENV
from nbgate.contract.baselines import load_baselines
from nbgate.contract.ci_context import CIContext
from nbgate.contract.codec import ResultsFileError
from nbgate.contract.files import display_path
from nbgate.contract.model import preferred
from reporting.errors import PublishSkipped, PublishUsageError
from reporting.files.baseline import Baseline, BaselineInfo, BaselineLookup
from reporting.files.preview import write_preview
from reporting.files.reports_folder import (
    RunReports,
    kinds_to_publish,
    load_reports,
    resolve_file,
    results_of_kind,
    run_context,
)
from reporting.files.shards import check_shards
from reporting.gitlab.client import (
    REQUEST_ERRORS,
    GitLabSession,
    connect_unless_dry_run,
    require_note_token,
)
from reporting.gitlab.comment import (
    CommentCase,
    CommentData,
    decode_state,
    is_comment_for,
    merge_previous,
    render_comment,
    shown_figures,
)
from reporting.gitlab.production import production_baseline

Echo = Callable[[str], None]
WHAT = "the merge request comment"


def publish_mr(
    folders: Sequence[Path],
    env: Mapping[str, str],
    *,
    kind: str | None = None,
    dry_run: bool = False,
    root: Path | None = None,
    baseline_path: str | None = None,
    echo: Echo = print,
    scrub: Callable[[str], str] = lambda text: text,
) -> None:
    """Post (or with ``dry_run`` print) the comment for each kind in the reports.

    ``baseline_path``: a local metrics.json (or release folder) to compare with instead of
    production, the newest releases' metrics (also NBGATE_BASELINE). ``scrub`` masks secrets in
    the body before it leaves.
    """
    root = root or Path.cwd()
    env_ctx = CIContext.from_env(env)
    runs = load_reports(folders)  # a missing folder is exit 2, in CI or not, dry run or not
    shards = check_shards(folders, runs)  # shards that do not belong together: exit 2 too
    if not dry_run:
        require_note_token(env, WHAT)
    session = connect_unless_dry_run(env, WHAT, write=True, dry_run=dry_run, echo=echo)
    kinds = kinds_to_publish(runs, kind, folders, "nothing to post")
    if session is not None:
        session.user_id()  # a bad token fails here, on GET /user, before any other work
    iid = find_merge_request(session, env_ctx) if session else None
    if session and iid is None and not dry_run:
        sha = env_ctx.commit_sha or "(unknown)"
        raise PublishSkipped(f"no open merge request for commit {sha}: nothing to post")
    lookup = _baseline(session, runs, baseline_path or env.get(BASELINE_ENV), root)
    if lookup.baseline is not None:
        echo("baseline: " + ", ".join(i.source for i in lookup.baseline.infos))
    else:
        echo(f"baseline: none ({lookup.reason})")
    for k in kinds:
        if not results_of_kind(runs, k):
            echo(f"no {k} cases in the reports: no {k} comment")
            continue
        data = comment_data(k, runs, env_ctx, lookup)
        data.incomplete, data.not_run = shards.incomplete, shards.not_run
        if dry_run or session is None or iid is None:  # (the last two only in a dry run)
            _show(session, iid, data, runs, echo, scrub)
        else:
            _post(session, iid, data, runs, echo, scrub)


def _show(
    session: GitLabSession | None,
    iid: int | None,
    data: CommentData,
    runs: Sequence[RunReports],
    echo: Echo,
    scrub: Callable[[str], str],
) -> None:
    """The dry run: the body that would be sent, figures as local paths (nothing uploaded).
    With a session the existing comment is read, so the body is the one an update would send."""
    previous = _existing(session, iid, data.kind)[0] if session and iid else None
    state = decode_state(previous.body) if previous else None
    shown = merge_previous(_with_local_figures(data, runs), state)
    action = "update" if previous else "create"
    target = f"!{iid}" if iid else "the merge request"
    echo(f"--- dry run: would {action} the {data.kind} comment on {target}; body: ---")
    echo(scrub(render_comment(shown)).rstrip("\n"))
    echo("--- end of body ---")
    # The same body as a page rendered like a GitLab note, its figures linked from beside it.
    preview = runs[0].folder / f"comment-{data.kind}.html"
    local = merge_previous(_with_local_figures(data, runs, preview.parent), state)
    write_preview(preview, scrub(render_comment(local)), f"nbgate {data.kind} comment")
    echo(f"preview: {display_path(preview)} (open it in a browser)")


# -- finding the merge request ---------------------------------------------------------------


def find_merge_request(session: GitLabSession, ctx: CIContext) -> int | None:
    """CI_MERGE_REQUEST_IID (MR pipelines), else the newest open MR that contains the commit,
    else the first of CI_OPEN_MERGE_REQUESTS for this project; None when there is none."""
    if ctx.merge_request_iid:
        try:
            return int(ctx.merge_request_iid)
        except ValueError:
            raise PublishUsageError(
                f"CI_MERGE_REQUEST_IID={ctx.merge_request_iid!r} is not a number") from None
    if ctx.commit_sha:
        endpoint = session.endpoint("GET", f"/repository/commits/{ctx.commit_sha}/merge_requests")
        commit = session.project.commits.get(ctx.commit_sha, lazy=True)
        try:
            found = commit.merge_requests(state="opened", get_all=True)
        except GitlabError as exc:
            # A commit GitLab does not know (a local SHA) has no MR; any other 404 (project,
            # access) is a real problem and must say so.
            if not (exc.response_code == 404 and "commit" in str(exc.error_message).lower()):
                raise session.error(exc, endpoint) from None
            found = []
        except REQUEST_ERRORS as exc:
            raise session.unreachable(exc, endpoint) from None
        iids = [int(mr["iid"]) for mr in found if isinstance(mr, dict) and "iid" in mr]
        if iids:
            return max(iids)  # iids grow with creation: the highest is the newest
    listed = ctx.open_merge_request_of_this_project()
    return int(listed) if listed else None


# -- baselines -------------------------------------------------------------------------------


def _baseline(
    session: GitLabSession | None,
    runs: Sequence[RunReports],
    local: str | None,
    root: Path,
) -> BaselineLookup:
    """The metrics given here (``--baseline``, NBGATE_BASELINE), else the baseline the run
    itself compared with (recorded in its metrics.json: the comment must not contradict the
    gates it reports), else production (the newest release of each notebook)."""
    if local:
        try:
            return BaselineLookup(Baseline.from_runs(load_baselines(root / local, local)))
        except ResultsFileError as exc:
            return BaselineLookup(None, str(exc))
    recorded = Baseline.recorded((r, run.baselines[r.case_id]) for run in runs
                                 for r in run.results if r.case_id in run.baselines)
    if recorded is not None:
        return BaselineLookup(recorded)
    if session is None:
        return BaselineLookup(None, "not in GitLab CI and no --baseline given")
    notebooks = [r.notebook for run in runs for r in run.results if r.declared]
    return production_baseline(session, notebooks)


def comment_data(
    kind: str, runs: Sequence[RunReports], env_ctx: CIContext, lookup: BaselineLookup
) -> CommentData:
    """The cases of ``kind`` with their baseline metrics and the job that ran them."""
    cases: dict[str, CommentCase] = {}
    baselines: list[BaselineInfo] = []
    baseline = lookup.baseline
    for run in runs:
        for result in run.results:
            if result.kind != kind:
                continue
            old = cases.get(result.case_id)
            if old is not None and preferred(old.result, result) is old.result:
                continue  # the GPU job's skip must not hide the CPU job's run
            found = baseline.match(result) if baseline else None
            cases[result.case_id] = CommentCase(
                result,
                dict(found[1].metrics) if found else None,
                {},
                run.pipeline.job_name,
                run.pipeline.job_url,
            )
            if found and found[0] not in baselines:
                baselines.append(found[0])
    ctx = run_context(runs, env_ctx)
    reason = lookup.reason if baseline is None or not baselines else None
    if baseline is not None and not baselines and not reason:
        reason = "no release of these notebooks yet"
    return CommentData(kind, ctx, list(cases.values()), baselines, reason)


# -- figures ---------------------------------------------------------------------------------


def _figure_files(data: CommentData, runs: Sequence[RunReports]) -> dict[str, Path]:
    """Figure path (as the result names it) -> the file here."""
    folders = {r.case_id: run.folder for run in runs for r in run.results}
    found = {}
    for case in data.cases:
        for path in case.result.figures.values():
            folder = folders.get(case.result.case_id)
            local = resolve_file(path, folder) if folder is not None else None
            if local is not None:
                found[path] = local
    return found


def _with_local_figures(
    data: CommentData, runs: Sequence[RunReports], base: Path | None = None
) -> CommentData:
    """``data`` with each figure linked to its local file: relative to ``base`` (a page beside
    it), else to the working folder."""
    files = _figure_files(data, runs)

    def where(path: Path) -> str:
        return Path(os.path.relpath(path, base)).as_posix() if base else display_path(path)

    cases = [replace(c, figures={p: where(files[p]) for p in c.result.figures.values()
                                 if p in files}) for c in data.cases]
    return replace(data, cases=cases)


def _upload_figures(
    session: GitLabSession, data: CommentData, runs: Sequence[RunReports], echo: Echo
) -> None:
    """Upload the figures the comment shows (``shown_figures``: failed cases' first, capped), so
    a run of thousands of cases never makes thousands of uploads."""
    files = _figure_files(data, runs)
    for case, name, path in shown_figures(data.cases):
        if path in case.figures:
            continue  # uploaded by an earlier job of this pipeline
        local = files.get(path)
        if local is None:
            echo(f"figure {name!r} of {case.result.case_id}: {path} not found here; not shown")
            continue
        endpoint = session.endpoint("POST", "/uploads")
        send = partial(session.project.upload, local.name, filepath=str(local))
        uploaded: Any = session.call(endpoint, send)
        url = uploaded.get("url") if isinstance(uploaded, dict) else None
        if isinstance(url, str) and url:
            case.figures[path] = url


# -- the note --------------------------------------------------------------------------------


def _list_notes(session: GitLabSession, iid: int) -> list[Any]:
    mr = session.project.mergerequests.get(iid, lazy=True)
    endpoint = session.endpoint("GET", f"/merge_requests/{iid}/notes")
    hints = {404: f"merge request !{iid} was not found in project {session.project_id}, or the "
                  "token cannot see it; check CI_MERGE_REQUEST_IID / CI_PROJECT_ID"}
    return session.call(endpoint, lambda: list(mr.notes.list(
        get_all=True, per_page=100, sort="asc", order_by="created_at")), hints)


def _ours(session: GitLabSession, notes: Sequence[Any], kind: str) -> list[Any]:
    user_id = session.user_id()
    found = []
    for note in notes:
        body = getattr(note, "body", "") or ""
        if getattr(note, "system", False) or not is_comment_for(body, kind):
            continue
        author = getattr(note, "author", None) or {}
        if user_id is not None and author.get("id") != user_id:
            continue
        found.append(note)
    return sorted(found, key=lambda n: (str(n.created_at), n.id))


def _existing(session: GitLabSession | None, iid: int | None, kind: str) -> tuple[Any, list[Any]]:
    """(the newest nbgate note for ``kind``, the older duplicates)."""
    if session is None or iid is None:
        return None, []
    ours = _ours(session, _list_notes(session, iid), kind)
    return (ours[-1], ours[:-1]) if ours else (None, [])


def _post(
    session: GitLabSession,
    iid: int,
    data: CommentData,
    runs: Sequence[RunReports],
    echo: Echo,
    scrub: Callable[[str], str],
) -> None:
    note, duplicates = _existing(session, iid, data.kind)
    data = merge_previous(data, decode_state(note.body) if note is not None else None)
    _upload_figures(session, data, runs, echo)
    body = scrub(render_comment(data))
    mr = session.project.mergerequests.get(iid, lazy=True)
    notes_path = f"/merge_requests/{iid}/notes"
    hints = {403: "the token may not post notes on this merge request; it needs the api scope "
                  "and the Developer role (a CI_JOB_TOKEN never can)"}
    if note is None:
        def existing() -> Any:
            return _existing(session, iid, data.kind)[0]

        note, created = session.create_once(
            session.endpoint("POST", notes_path),
            lambda **opts: mr.notes.create({"body": body}, **opts),
            existing,
            hints,
        )
        if created:
            echo(f"created the {data.kind} comment on !{iid} (note {note.id})")
            return
        echo(f"GitLab's answer to creating the {data.kind} comment was lost, but the note is "
             f"there (note {note.id}): not posting it twice")
    if (note.body or "").strip() != body.strip():  # GitLab strips what it stores
        note.body = body
        session.call(session.endpoint("PUT", f"{notes_path}/{note.id}"), note.save, hints)
        echo(f"updated the {data.kind} comment on !{iid} (note {note.id})")
    else:
        echo(f"the {data.kind} comment on !{iid} already shows this (note {note.id})")
    if session.user_id() is None:
        return  # without knowing who we are, an older match may be someone else's note
    for extra in duplicates:
        session.call(session.endpoint("DELETE", f"{notes_path}/{extra.id}"),
                     partial(mr.notes.delete, extra.id))
        echo(f"deleted duplicate {data.kind} comment (note {extra.id}) on !{iid}")

