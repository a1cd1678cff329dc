"""Masking secrets: which values, in which written forms, and across split stream writes."""

from __future__ import annotations

import html
import json
from urllib.parse import quote, quote_plus

import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from nbgate.contract.redact import MASK, MIN_SECRET_LENGTH, NAME_MASK, Redactor

TOKEN = "glpat-abcdefgh1234"
ESCAPED = 'pa"ss\\w\u00f6rd <&> 42'  # quote, backslash, non-ASCII, HTML and URL specials


def test_minimum_length_is_gitlabs_masking_minimum() -> None:
    assert MIN_SECRET_LENGTH == 8
    redactor = Redactor({"A_TOKEN": "8chars!!", "B_TOKEN": "7chars!"})
    assert redactor.text("x 8chars!! y") == f"x {MASK} y"
    # Shorter values are not masked: "true" or "1234" would blank out ordinary text.
    assert redactor.text("x 7chars! y") == "x 7chars! y"


def test_only_secret_looking_names_are_masked_unless_known() -> None:
    env = {"HOME_DIR": "/home/someone", "DB_PASSWORD": "hunter2-hunter2", "API_KEY": "k" * 9}
    redactor = Redactor(env, always=["tiny"])
    assert redactor.text("/home/someone hunter2-hunter2 kkkkkkkkk tiny") == (
        f"/home/someone {MASK} {MASK} {MASK}"
    )


@pytest.mark.parametrize(
    "written",
    [
        ESCAPED,
        repr(ESCAPED),
        repr({"p": ESCAPED}),
        json.dumps(ESCAPED),
        json.dumps(ESCAPED, ensure_ascii=False),
        json.dumps({"p": ESCAPED}),
        repr(ESCAPED.encode()),
        html.escape(ESCAPED),
        quote(ESCAPED, safe=""),
        quote_plus(ESCAPED),
    ],
)
def test_every_written_form_is_masked(written: str) -> None:
    masked = Redactor({"DB_PASSWORD": ESCAPED}).text(f"before {written} after")
    assert MASK in masked
    for part in ("pa", "ss", "rd", "42"):
        assert part not in masked.replace("before", "").replace("after", "")


def test_a_secret_containing_another_is_masked_whole() -> None:
    redactor = Redactor({"SHORT_TOKEN": "abcdefgh", "LONG_TOKEN": "abcdefgh-and-more"})
    assert redactor.text("abcdefgh-and-more") == MASK


def test_names_stay_valid_names() -> None:
    redactor = Redactor({"GITLAB_TOKEN": TOKEN})
    assert redactor.name(f"auc_{TOKEN}") == f"auc_{NAME_MASK}"
    assert redactor.name("auc") == "auc"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["glpat-abc", "defgh1234\n"], [MASK, "\n"]),
        (["x glpat", "-abcdefgh", "1234 y"], ["x " + MASK, "", " y"]),
        ([f"{TOKEN} and {TOKEN[:4]}", f"{TOKEN[4:]}!"], [f"{MASK} and {MASK}", "!"]),
        (["no secret", " here"], ["no secret", " here"]),
        (["", TOKEN, ""], ["", MASK, ""]),
    ],
)
def test_split_writes_are_masked_as_one_text(pieces: list[str], expected: list[str]) -> None:
    assert Redactor({"GITLAB_TOKEN": TOKEN}).pieces(pieces) == expected


def test_notebook_streams_are_joined_per_cell_and_stream() -> None:
    cell = new_code_cell("...")
    cell.outputs = [
        new_output("stream", name="stdout", text="token: glpat-abcd"),
        new_output("stream", name="stderr", text="a warning\n"),
        new_output("display_data", data={"text/plain": f"repr {TOKEN!r}"}),
        new_output("stream", name="stdout", text="efgh1234\n"),
        new_output("execute_result", data={"text/plain": json.dumps(TOKEN)}, execution_count=1),
    ]
    nb = Redactor({"GITLAB_TOKEN": TOKEN}).notebook(new_notebook(cells=[cell]))
    outputs = nb.cells[0].outputs
    assert [o.output_type for o in outputs] == [
        "stream", "stream", "display_data", "stream", "execute_result"
    ]
    assert outputs[0].text == f"token: {MASK}" and outputs[3].text == "\n"
    assert outputs[1].text == "a warning\n"
    assert outputs[2].data["text/plain"] == f"repr '{MASK}'"
    assert outputs[4].data["text/plain"] == f'"{MASK}"'


def test_without_secrets_nothing_changes() -> None:
    nb = new_notebook(cells=[new_code_cell("print(1)")])
    redactor = Redactor({"HOME": "/root"})
    assert redactor.notebook(nb) is nb
    assert redactor.text("glpat-abcdefgh1234") == "glpat-abcdefgh1234"
