"""The ``nbgate`` command: publishing reports to GitLab, fetching models, listing cases.

This is the one place that composes the harness (``nbgate``) and the reporting plugin
(``reporting``); it only parses arguments, picks paths and maps outcomes to exit codes:

    0  done, or skipped with one line saying why (not in CI, no token, no merge request)
    1  GitLab said no (401/403/404/400) or stayed unreachable after retries; in CI on a merge
       request's branch, no token that can post the comment; merged reports that miss a
       shard's cases (written all the same; ``--allow-incomplete`` makes it 0)
    2  bad input: options, [tool.nbgate], a missing reports folder or output file

Heavy modules (python-gitlab, requests, tabulate) are imported inside the commands so that
``nbgate --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbgate import __version__
from nbgate.contract.files import display_path
from nbgate.contract.model import KINDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbgate",
        description="Publish nbgate reports to GitLab, fetch published models, list cases. "
        "Run pytest (e.g. `pytest -m train`) first: it writes the reports these commands read.",
        epilog="GitLab: CI_API_V4_URL and CI_PROJECT_ID come from GitLab CI; the token from "
        "REPO_TOKEN or GITLAB_TOKEN (CI_JOB_TOKEN can fetch and upload packages, not post notes "
        "or wiki pages). Without them publishing is skipped with exit 0, except `publish mr` "
        "in CI on a merge request's branch (exit 1: the comment would silently never appear). "
        "`nbgate doctor` checks what an instance and token allow.",
    )
    parser.add_argument("--version", action="version", version=f"nbgate {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"),
                        help="the project's pyproject.toml with [tool.nbgate] "
                        "(default: %(default)s)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    publish = commands.add_parser(
        "publish", help="post reports to GitLab: MR comment, wiki history, model packages",
        description="Post the reports of a train/score run to GitLab.")
    targets = publish.add_subparsers(dest="target", metavar="TARGET", required=True)
    for name, text in (
        ("mr", "create or update the sticky merge request comment (one per kind)"),
        ("wiki", "add this pipeline's rows to the wiki history page (one per kind)"),
        ("artifacts", "upload each pipeline's declared outputs to the generic package registry"),
    ):
        sub = targets.add_parser(name, parents=[common], help=text, description=text + ".")
        sub.add_argument("--reports", type=Path, action="append", metavar="DIR",
                         help="reports folder holding metrics.json, or a folder of job folders "
                         "(nbgate-jobs/); repeatable (default: [tool.nbgate] reports)")
        sub.add_argument("--dry-run", action="store_true",
                         help="print what would be sent instead of sending it")
        sub.add_argument("--kind", choices=KINDS, help="only this kind (default: every kind "
                         "in the reports)")
        if name == "mr":
            sub.add_argument("--baseline", metavar="PATH",
                             help="compare with this metrics.json (or release folder) instead "
                             "of production, the newest releases (also NBGATE_BASELINE)")
        if name == "artifacts":
            sub.add_argument("--version", dest="package_version", metavar="V",
                             help="package version (default: a release <semver>+<sha8>.<pipeline> "
                             "on the default branch, else a candidate "
                             "<semver>-mr<iid>.<branch>+<sha8>.<pipeline>)")
        sub.set_defaults(handler=_publish)

    fetch = commands.add_parser(
        "fetch-artifact", parents=[common], help="download a pipeline's newest published model",
        description="Download the files a pipeline published with `nbgate publish artifacts`.")
    fetch.add_argument("--pipeline", required=True, metavar="NAME",
                       help="notebook path, package name, or a unique notebook stem "
                       "(e.g. training_example)")
    fetch.add_argument("--dest", required=True, type=Path, metavar="PATH",
                       help="file to write (one file), or folder to write into")
    fetch.add_argument("--version", dest="package_version", metavar="V",
                       help="this release or candidate version instead of the newest release")
    fetch.add_argument("--file", dest="files", action="append", metavar="NAME",
                       help="file name in the package (default: the pipeline's declared outputs); "
                       "repeatable")
    fetch.set_defaults(handler=_fetch)

    verify = commands.add_parser(
        "verify", parents=[common],
        help="print where production came from and check its files against the manifest",
        description="Print the newest release of each pipeline with outputs (or --pipeline): "
        "version, commit, merge request, pipeline, job, image, the candidate it came from, "
        "each case's fingerprint with its parts, and every file with its sha256, downloaded "
        "and checked. Exit 1 when a file does not match.")
    verify.add_argument("--pipeline", metavar="NAME",
                        help="notebook path, package name, or a unique notebook stem "
                        "(default: every pipeline with outputs)")
    verify.add_argument("--version", dest="package_version", metavar="V",
                        help="this release or candidate version instead of the newest release")
    verify.set_defaults(handler=_verify)

    promote = commands.add_parser(
        "promote", parents=[common],
        help="release the merged merge request's reviewed candidate (default-branch pushes)",
        description="Find the merge request the pushed commit merged, its candidates (by the "
        "commits in their manifests), and release the newest passing one whose fingerprints "
        "equal this checkout's, unchanged. Nothing to promote: one line, exit 0.")
    promote.add_argument("--dry-run", action="store_true",
                         help="say what would be released instead of releasing it")
    promote.set_defaults(handler=_promote)

    baseline = commands.add_parser(
        "fetch-baseline", parents=[common],
        help="download production's metrics (newest releases) for --nbgate-baseline",
        description="Write the metrics published with each pipeline's newest release into a "
        "folder, where pytest's --nbgate-baseline (NBGATE_BASELINE) reads them, so baseline "
        "rules are checked.")
    baseline.add_argument("--dest", type=Path, default=None, metavar="DIR",
                          help="folder to write into (default: <reports>/baseline)")
    baseline.set_defaults(handler=_fetch_baseline)

    merge = commands.add_parser(
        "merge-reports", parents=[common],
        help="merge the reports of several jobs (shards, CPU and GPU) into one set",
        description="Write one metrics.json, metrics.txt, junit.xml and summary.md for every "
        "case in the given reports folders (e.g. nbgate-jobs/, one folder per job or shard). "
        "The cases of a shard that left no reports are listed as not run in every file, and "
        "the command exits 1; shards of different pipelines, commits or splits, and two "
        "different results for one case, are refused (exit 2).")
    merge.add_argument("--reports", type=Path, action="append", required=True, metavar="DIR",
                       help="a reports folder or a folder of job folders; repeatable")
    merge.add_argument("--into", type=Path, required=True, metavar="DIR",
                       help="where to write the merged reports")
    merge.add_argument("--allow-incomplete", action="store_true",
                       help="exit 0 when shards are missing (the files say so all the same): "
                       "for jobs that post whatever ran")
    merge.set_defaults(handler=_merge_reports)

    doctor = commands.add_parser(
        "doctor", parents=[common],
        help="ask GitLab what will work: version, token, role, registry, wiki, MLflow",
        description="Ask the GitLab instance (CI_SERVER_URL or CI_API_V4_URL, CI_PROJECT_ID, the "
        "token nbgate would use) what the CI file needs, and print one row per check with its "
        "fix. Exit 0 when everything will work, 1 when a row fails.")
    doctor.set_defaults(handler=_doctor)

    init = commands.add_parser(
        "init", help="declare notebooks in pyproject.toml and include nbgate's CI component",
        description="Check each notebook (its 'parameters' cell, the metrics it records, its "
        "kernel) and append a [tool.nbgate] table declaring them to pyproject.toml, creating "
        "the file if needed. Only ever adds: an existing [tool.nbgate] or .gitlab-ci.yml is "
        "never edited, and a second run changes nothing. Exit 0: declared (now or already); "
        "2: bad input, or an existing [tool.nbgate] lacks these notebooks (the lines to add "
        "are printed).")
    init.add_argument("notebooks", nargs="+", type=Path, metavar="NOTEBOOK")
    init.add_argument("--kind", choices=KINDS, required=True, help="what the notebooks do")
    init.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"),
                      help="the repository's pyproject.toml (default: %(default)s)")
    init.add_argument("--ci", action="store_true",
                      help="write a .gitlab-ci.yml that includes nbgate's component (or print "
                      "the include lines when the file exists)")
    init.add_argument("--tag-parameters", action="store_true",
                      help="tag the first all-assignments code cell as 'parameters' where no "
                      "cell is tagged")
    init.add_argument("--dry-run", action="store_true", help="show everything, write nothing")
    init.add_argument("--component-project", default=None, metavar="GROUP/PROJECT",
                      help="where nbgate's project lives on your GitLab (default: nbgate/nbgate)")
    init.set_defaults(handler=_init)

    cases = commands.add_parser(
        "cases", parents=[common], help="check [tool.nbgate] and list the declared cases",
        description="Validate [tool.nbgate] and list every declared case with its marks, "
        "thresholds and outputs.")
    cases.add_argument("--kind", choices=KINDS, help="only cases of this kind")
    cases.set_defaults(handler=_cases)
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return int(exc.code or 0)
    environment = os.environ if env is None else env
    handler: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.handler
    return handler(args, environment)


# -- commands --------------------------------------------------------------------------------


def _label(args: argparse.Namespace) -> str:
    return "nbgate " + " ".join(p for p in (args.command, getattr(args, "target", None)) if p)


def _run(args: argparse.Namespace, env: Mapping[str, str], body: Callable[..., None]) -> int:
    """Run ``body(config, echo)`` with the project's config; map outcomes to exit codes."""
    from nbgate.config import ConfigError, load_config
    from reporting.errors import (
        PublishError,
        PublishRefused,
        PublishSkipped,
        PublishUsageError,
        ReportsIncomplete,
    )
    from reporting.gitlab.client import scrubber

    scrub = scrubber(env)
    label = _label(args)

    def echo(line: str) -> None:
        print(scrub(line), flush=True)

    try:
        config = load_config(args.pyproject)
        body(config, echo, scrub)
    except PublishSkipped as exc:
        echo(f"{label}: {exc}")
        return 0
    except (PublishUsageError, ConfigError) as exc:
        print(scrub(f"{label}: error: {exc}"), file=sys.stderr, flush=True)
        return 2
    except (PublishError, PublishRefused, ReportsIncomplete) as exc:
        print(scrub(f"{label}: error: {exc}"), file=sys.stderr, flush=True)
        return 1
    return 0


def _root(config: Any) -> Path:
    return config.root if config is not None else Path.cwd()


def _reports(args: argparse.Namespace, config: Any) -> list[Path]:
    if args.reports:
        return [Path(p) for p in args.reports]
    return [config.reports if config is not None else Path("reports")]


def _declared(config: Any) -> list[Any]:
    """The declared pipelines as the publishing wing takes them."""
    from reporting.gitlab.publish_artifacts import Declared

    pipelines = config.pipelines if config is not None else ()
    return [Declared(p.notebook, p.kind, tuple(p.outputs), p.version) for p in pipelines]


def _publish(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        folders = _reports(args, config)
        if args.target == "mr":
            from reporting.gitlab.publish_mr import publish_mr

            publish_mr(folders, env, kind=args.kind, dry_run=args.dry_run, root=_root(config),
                       baseline_path=args.baseline, echo=echo, scrub=scrub)
        elif args.target == "wiki":
            from reporting.gitlab.publish_wiki import WikiSettings, publish_wiki

            settings = WikiSettings(**config.wiki) if config is not None else WikiSettings()
            publish_wiki(folders, env, settings=settings,
                         kind=args.kind, dry_run=args.dry_run, echo=echo, scrub=scrub)
        else:
            from reporting.gitlab.publish_artifacts import publish_artifacts

            publish_artifacts(folders, env, declared=_declared(config), root=_root(config),
                              kind=args.kind,
                              version=args.package_version, dry_run=args.dry_run, echo=echo)

    return _run(args, env, body)


def _fetch(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from reporting.gitlab.publish_artifacts import fetch_artifact

        fetch_artifact(args.pipeline, args.dest, env, declared=_declared(config),
                       version=args.package_version, files=args.files or (), echo=echo)

    return _run(args, env, body)


def _promote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from nbgate.running.fingerprint import checkout_fingerprints
        from reporting.gitlab.promote import promote

        # The merged code's fingerprints, computed here (the harness) and compared there.
        fingerprints = (checkout_fingerprints(config, in_ci=bool(env.get("CI")))
                        if config is not None else {})
        promote(env, declared=_declared(config), fingerprints=fingerprints,
                dry_run=args.dry_run, echo=echo)

    return _run(args, env, body)


def _verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from reporting.gitlab.verify import verify

        verify(args.pipeline, env, declared=_declared(config), version=args.package_version,
               echo=echo)

    return _run(args, env, body)


def _fetch_baseline(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from reporting.gitlab.production import fetch_baseline

        dest = args.dest or (config.reports if config is not None else Path("reports")) / "baseline"
        notebooks = [p.notebook for p in config.pipelines] if config is not None else []
        fetch_baseline(dict(env), notebooks, dest, echo=echo)

    return _run(args, env, body)


def _doctor(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    works: list[bool] = []

    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from reporting.gitlab.doctor import doctor

        works.append(doctor(env, echo))

    code = _run(args, env, body)
    return code or (0 if all(works) else 1)


def _merge_reports(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from reporting.errors import ReportsIncomplete
        from reporting.files.reports_folder import load_reports
        from reporting.files.shards import check_shards, merge_reports

        runs = load_reports(args.reports)
        shards = check_shards(args.reports, runs)
        written = merge_reports(runs, args.into, _root(config), shards)
        cases = {r.case_id for run in runs for r in run.results}
        echo(f"merged {len(cases)} case(s) from {len(runs)} report(s) into "
             f"{display_path(args.into)}: " + ", ".join(p.name for p in written.files))
        for line in written.errors:
            echo(f"could not write {line}")
        if shards.incomplete:
            listed = ", ".join(shards.not_run[:10])
            more = len(shards.not_run) - 10
            message = f"{shards.incomplete}: {listed}" + (f" and {more} more" if more > 0 else "")
            if not args.allow_incomplete:
                raise ReportsIncomplete(f"{message} (the merged files say so; "
                                        "--allow-incomplete exits 0)")
            echo(f"warning: {message}")

    return _run(args, env, body)


def _init(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from nbgate.config import ConfigError
    from nbgate.init_project import COMPONENT_PROJECT, InitError, InitOptions, run_init

    options = InitOptions(args.notebooks, args.kind, args.pyproject, ci=args.ci,
                          tag_parameters=args.tag_parameters, dry_run=args.dry_run,
                          component_project=args.component_project or COMPONENT_PROJECT)
    try:
        return run_init(options, lambda line: print(line, flush=True))
    except (InitError, ConfigError) as exc:
        print(f"nbgate init: error: {exc}", file=sys.stderr, flush=True)
        return 2


def _cases(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    def body(config: Any, echo: Callable[[str], None], scrub: Callable[[str], str]) -> None:
        from reporting.errors import PublishUsageError

        if config is None:
            raise PublishUsageError(f"{args.pyproject}: no [tool.nbgate] table (or no such file)")
        cases = [c for c in config.cases() if args.kind in (None, c.pipeline.kind)]
        pipelines = {c.pipeline.notebook for c in cases}
        echo(f"{args.pyproject}: {len(cases)} case(s) in {len(pipelines)} pipeline(s); "
             f"reports go to {display_path(config.reports)}/")
        width = max((len(c.id) for c in cases), default=0)
        for case in cases:
            pipeline = case.pipeline
            rules = ", ".join(t.text for t in pipeline.thresholds)
            rules = rules or "no thresholds"
            bits = [f"-m \"{pipeline.kind} and {case.runner.name}\"", rules,
                    f"timeout {pipeline.timeout:g} s"]
            if pipeline.outputs:
                bits.append("outputs: " + ", ".join(pipeline.outputs))
            if case.runner.gpu:
                bits.append("needs a CUDA GPU")
            echo(f"{case.id:<{width}}  " + "  ·  ".join(bits))

    return _run(args, env, body)


if __name__ == "__main__":
    sys.exit(main())
