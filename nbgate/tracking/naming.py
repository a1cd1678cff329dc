"""What the pytest side names in MLflow: experiments, models, params, the run's URL, and the
advice when a notebook's own ``mlflow.set_experiment`` fights nbgate's run.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from nbgate.contract.ci_context import CIContext
from nbgate.contract.model import CaseResult
from nbgate.contract.redact import MASK, Redactor
from nbgate.tracking.errors import clip, safe_uri
from nbgate.tracking.store import LOCAL_STORE

if TYPE_CHECKING:
    from nbgate.running.case import CaseRun

PARAM_VALUE_LIMIT = 500
TAG_VALUE_LIMIT = 1000
NAME_MASK = "MASKED"  # a secret in a name: "[MASKED]" is not a valid MLflow key
_GITLAB_ENDPOINT = re.compile(r"^(?P<prefix>.*?)/api/v4/projects/(?P<project>[^/]+)/ml/mlflow/?$")
_MODEL_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXPERIMENT_CONFLICT = "because active experiment ID does not match environment run ID"
_SET_EXPERIMENT = re.compile(r"set_experiment\(\s*(?:experiment_name\s*=\s*)?(['\"])(.+?)\1")


def explain_experiment_conflict(result: CaseResult, run: CaseRun, experiment: str) -> None:
    """A notebook's own ``mlflow.set_experiment`` cannot move nbgate's run: say what to do.

    MLflow refuses to log to ``MLFLOW_RUN_ID`` once the notebook made another experiment the
    active one, with a message about command-line arguments that do not exist here. The fix is
    the pipeline's ``experiment`` key, which makes nbgate create the run in that experiment.
    """
    failure = result.failure
    if failure is None or _EXPERIMENT_CONFLICT not in (failure.exception or failure.message):
        return
    wanted = None
    with contextlib.suppress(Exception):  # a suggestion only: the notebook's own literal name
        import nbformat

        nb = nbformat.read(str(run.root / run.spec.notebook), as_version=4)
        for cell in nb.cells:
            match = _SET_EXPERIMENT.search(cell.source)
            if match:
                wanted = match.group(2)
                break
    key = f'experiment = "{wanted}"' if wanted else 'experiment = "<name>"'
    failure.message = (
        f"{failure.message.split(':', 1)[0]}: the notebook calls mlflow.set_experiment(), but "
        f"nbgate logs this case to its run in experiment {experiment!r}. Name the experiment in "
        f"the pipeline instead: {key} in its [[tool.nbgate.pipelines]] entry "
        f"(notebook = \"{run.spec.notebook}\") in pyproject.toml, and drop the set_experiment "
        "call (or keep it with the same name)"
    )


def mlflow_name(redactor: Redactor, name: str) -> str:
    """A name nbgate sends to MLflow (param, metric, artifact, experiment, model), redacted."""
    return redactor.text(name).replace(MASK, NAME_MASK)


# -- naming ----------------------------------------------------------------------------------
def local_store_uri(root: Path) -> str:
    return "sqlite:///" + (Path(root).resolve() / LOCAL_STORE).as_posix()


def experiment_name(spec: Any) -> str:
    """The pipeline's declared ``experiment``, else one per pipeline: ``<notebook>::<kind>``."""
    return spec.experiment or f"{spec.notebook}::{spec.kind}"


def model_name(notebook: str, experiment: str) -> str:
    """The registered model of a training pipeline: its notebook's name.

    GitLab refuses a model named like an existing experiment, hence the suffix in that case.
    """
    name = _MODEL_NAME_UNSAFE.sub("-", PurePosixPath(notebook).stem).strip("-.") or "model"
    return f"{name}-model" if name == experiment else name


def mlflow_params(parameters: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in parameters.items():
        text = value if isinstance(value, str) else (
            json.dumps(value, default=str) if isinstance(value, (dict, list, tuple)) else str(value)
        )
        out[str(key)] = clip(text, PARAM_VALUE_LIMIT)
    return out


def run_url(uri: str, experiment_id: str | None, run_id: str, ci: CIContext) -> str | None:
    """A browser link for the run: MLflow's UI, or GitLab's experiment page; None for files."""
    parts = urlsplit(safe_uri(uri))
    if parts.scheme not in ("http", "https") or experiment_id is None:
        return None
    gitlab = _GITLAB_ENDPOINT.match(parts.path)
    if gitlab is None:
        base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"
    # GitLab's pages use its own ids: a run (candidate) page needs an iid the MLflow API does
    # not return, but the experiment id it returns is the experiment page's iid.
    project = unquote(gitlab["project"])
    if ci.project_url and project in (ci.project_id, ci.project_path):
        project_url = ci.project_url.rstrip("/")
    elif not project.isdigit():
        path = f"{gitlab['prefix']}/{project}"
        project_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    else:
        return None
    return f"{project_url}/-/ml/experiments/{experiment_id}"
