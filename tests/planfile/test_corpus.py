"""The bad-plan corpus: every broken plan in tests/corpus/ gives exactly the pinned message and exit code 1.

Each case is ``tests/corpus/NNN-name.yaml`` (or a directory ``NNN-name/`` of plan files that merge) with
``NNN-name.expected`` beside it: the first line is the command (``$ apimon validate [--strict] FILE...``, paths
relative to tests/corpus/), the other lines are the diagnostics stderr must hold, in order, one per line,
followed by the one summary line. Inputs that must not be committed (binary, 50 MB, invalid UTF-8, a missing
file, a directory) are made at run time in ``tmp_path``.

To re-pin after deliberately improving a message: ``APIMON_REPIN_CORPUS=1 pytest tests/plan/test_corpus.py``,
then review ``git diff tests/corpus``.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import run_cli

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
# the environment the corpus runs in: APIMON_* variables are removed by run_cli, these are added
CORPUS_ENV = {"APIMON_CORPUS_SHORT_KEY": "Kx9-tiny-key"}
DIAG_RE = re.compile(r"^\S.*:\d+:\d+: (error|warning): .+$")
SUMMARY_RE = re.compile(r"^\d+ errors?; the plan is not valid$")


def _cases() -> list[str]:
    return sorted(p.stem for p in CORPUS.glob("*.expected"))


def _read_case(name: str) -> tuple[list[str], list[str]]:
    lines = (CORPUS / f"{name}.expected").read_text(encoding="utf-8").splitlines()
    assert lines and lines[0].startswith("$ apimon "), f"{name}.expected must start with the command line"
    return shlex.split(lines[0][2:])[1:], [line for line in lines[1:] if line]


def _check_output(result, expected: list[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert result.code == 1, result.stderr
    got = result.stderr.splitlines()
    assert got[:-1] == expected, "\n".join(got)
    assert SUMMARY_RE.match(got[-1]), got[-1]
    for line in expected:
        assert DIAG_RE.match(line), f"not FILE:LINE:COL: severity: message: {line!r}"


def test_corpus_is_large_enough():
    committed = [p for p in CORPUS.iterdir() if p.suffix == ".yaml" or p.is_dir()]
    assert len(committed) >= 45
    assert len(_cases()) == len(committed), "every corpus plan needs a .expected file (and vice versa)"


@pytest.mark.parametrize("name", _cases())
def test_corpus_case(name: str) -> None:
    args, expected = _read_case(name)
    result = run_cli(*args, cwd=CORPUS, env=CORPUS_ENV)
    if os.environ.get("APIMON_REPIN_CORPUS"):
        command = (CORPUS / f"{name}.expected").read_text().splitlines()[0]
        (CORPUS / f"{name}.expected").write_text(
            "\n".join([command, *result.stderr.splitlines()[:-1]]) + "\n", encoding="utf-8"
        )
        return
    _check_output(result, expected)


def test_every_corpus_message_is_one_line_with_position_path_and_hint() -> None:
    """The message contract: FILE:LINE:COL: error: <field path>: <what is wrong>; <what is allowed>."""
    for name in _cases():
        _, expected = _read_case(name)
        assert expected, name
        for line in expected:
            m = re.match(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): (?P<rest>.*)$", line)
            assert m, line
            assert int(m["line"]) >= 1 and int(m["col"]) >= 1, line
            assert ";" in m["rest"], f"no '; what is allowed' part: {line}"


# ---------------------------------------------------------------- inputs made at run time


def _validate_in(tmp_path: Path, *names: str):
    return run_cli("validate", *names, cwd=tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00junk\xff\xfe\x00")
    _check_output(
        _validate_in(tmp_path, "plan.yaml"),
        ["plan.yaml:1:8: error: is a binary file (it holds NUL bytes); a plan file is UTF-8 YAML text"],
    )


def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_bytes(bytes(range(1, 256)) * 4)
    result = _validate_in(tmp_path, "plan.yaml")
    _check_output(result, result.stderr.splitlines()[:-1])
    assert len(result.stderr.splitlines()) == 2


def test_fifty_megabyte_file(tmp_path: Path) -> None:
    big = tmp_path / "huge.yaml"
    with big.open("wb") as fh:
        fh.write(b"apimon: 1\nproducts:\n")
        chunk = b"".join(b"  p%06d: {display_name: P}\n" % i for i in range(20_000))
        while fh.tell() < 50 * 2**20:
            fh.write(chunk)
    size = big.stat().st_size / 2**20
    _check_output(
        _validate_in(tmp_path, "huge.yaml"),
        [
            f"huge.yaml:1:1: error: file is {size:.1f} MiB; plan files of up to 16 MiB are read "
            "(split the plan into several files)"
        ],
    )


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    _check_output(
        _validate_in(tmp_path, "plans"),
        [f"plans:1:1: error: is a directory; give plan files, e.g. {os.path.join('plans', '*.yaml')}"],
    )


def test_missing_file(tmp_path: Path) -> None:
    _check_output(
        _validate_in(tmp_path, "nope.yaml"),
        ["nope.yaml:1:1: error: no such file; give the path of a plan file (YAML)"],
    )


def test_invalid_utf8(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_bytes(b"apimon: 1\nproducts:\n  free: {display_name: Caf\xe9}\n")
    _check_output(
        _validate_in(tmp_path, "plan.yaml"),
        ["plan.yaml:3:27: error: invalid UTF-8 (byte 0xe9); plan files are UTF-8 text"],
    )


def test_utf16_file(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_bytes("apimon: 1\n".encode("utf-16"))
    _check_output(
        _validate_in(tmp_path, "plan.yaml"),
        ["plan.yaml:1:1: error: is UTF-16 text; plan files are UTF-8 (re-save the file as UTF-8)"],
    )


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["apimon: 1", "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, cur in zip("abcdefghi", "bcdefghij", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    result = _validate_in(tmp_path, "bomb.yaml")
    _check_output(result, result.stderr.splitlines()[:-1])
    assert "aliases expand the document to more than 200,000 values" in result.stderr


def test_deep_nesting_beyond_the_yaml_parser_limit(tmp_path: Path) -> None:
    (tmp_path / "deep.yaml").write_text("apimon: " + "[" * 5000 + "]" * 5000 + "\n")
    result = _validate_in(tmp_path, "deep.yaml")
    _check_output(result, result.stderr.splitlines()[:-1])
    assert "nested too deeply" in result.stderr


def test_several_broken_files_report_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("apimon: 1\ntarget: {provider: local}\nproducts:\n  free: {display_name: F}\n")
    (tmp_path / "b.yaml").write_bytes(b"\x00")
    (tmp_path / "c.yaml").write_text("apimon: 1\nsubscribers:\n  acme: {product: gold}\n")
    # b.yaml could not be read, so c.yaml's reference to "gold" (perhaps defined in b) is not reported
    _check_output(
        _validate_in(tmp_path, "a.yaml", "b.yaml", "c.yaml", "d.yaml"),
        [
            "b.yaml:1:1: error: is a binary file (it holds NUL bytes); a plan file is UTF-8 YAML text",
            "d.yaml:1:1: error: no such file; give the path of a plan file (YAML)",
        ],
    )


def test_too_many_nodes_is_refused_before_building_them(tmp_path: Path) -> None:
    (tmp_path / "dense.yaml").write_text("apimon: 1\nx: [" + "1," * 1_100_000 + "1]\n")
    _check_output(
        _validate_in(tmp_path, "dense.yaml"),
        [
            "dense.yaml:2:1999995: error: the document holds more than 1,000,000 YAML nodes (keys and values); "
            "split the plan into several files"
        ],
    )
