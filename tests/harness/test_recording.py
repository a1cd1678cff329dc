"""The notebook-side API, outside a kernel (values) and read back from outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbgate import record
from nbgate.running.notebook import read_recorded
from nbgate.running.recording import METRIC_MIME


def test_plain_python_prints_the_metric(capsys: pytest.CaptureFixture[str]) -> None:
    record("auc", np.float32(0.5))
    assert capsys.readouterr().out.strip() == "auc = 0.5"


@pytest.mark.parametrize("value", ["0.9", [0.9], None, True, np.bool_(True), np.array([1.0, 2.0])])
def test_non_numbers_are_rejected_naming_the_metric(value: object) -> None:
    with pytest.raises(TypeError, match=r"nbgate\.record\('auc'"):
        record("auc", value)


@pytest.mark.parametrize("name", ["", "has space", "/quick", 3, "a" * 101])
def test_bad_names_are_rejected(name: object) -> None:
    with pytest.raises(ValueError, match="must start with a letter"):
        record(name, 1.0)  # type: ignore[arg-type]


def test_outputs_are_read_back_last_record_wins() -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    def metric(name: str, value: float | None, text: str) -> object:
        return new_output(
            "display_data",
            data={
                METRIC_MIME: {"name": name, "value": value, "text": text},
                "text/plain": f"{name}",
            },
        )

    cell_a = new_code_cell("...")
    cell_a.outputs = [metric("auc", 0.5, "0.5"), new_output("stream", text="noise")]
    cell_b = new_code_cell("...")
    cell_b.outputs = [
        metric("auc", 0.75, "0.75"),
        metric("loss", None, "nan"),
        metric("big", None, "inf"),
    ]
    nb = new_notebook(cells=[cell_a, cell_b])
    nbformat.validate(nb)
    recorded = read_recorded(nb)
    assert recorded.metrics["auc"] == 0.75
    assert math.isnan(recorded.metrics["loss"])
    assert recorded.metrics["big"] == math.inf
