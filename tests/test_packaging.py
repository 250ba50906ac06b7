"""Packaging for a plans repository (issue 11): `python -m build` makes the `apimon-cli` wheel and sdist, and the
CI examples (examples/ci/) work from a repository that holds nothing but a plan file, installing apimon the two
documented ways: a pinned version from a package index, or a wheel file.

The examples' own commands are run, verbatim, in a temporary directory holding only the plan, with the
example's `APIMON` variable pointing at the locally built wheel (a pinned `apimon-cli==VERSION` found in a
local folder standing in for the package index, or the wheel's path). The install goes into a fresh virtualenv
whose dependencies are the test environment's own (linked in, apimon itself left out), so no network is used
and `apimon` runs from the wheel only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, write_plan

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
WHEEL = f"apimon_cli-{VERSION}-py3-none-any.whl"
SDIST = f"apimon_cli-{VERSION}.tar.gz"

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: .apimon}}
billing: {currency: EUR}
products:
  free: {display_name: Free, pricing: {model: free}}
  team: {display_name: Team, pricing: {model: flat, fee: "49.00"}}
subscribers:
  acme: {product: team, email: billing@acme.example}
  bob: {product: free}
"""


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """`python -m build` of this checkout: sdist, then the wheel built from the sdist."""
    try:
        import build  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("python -m build is not installed (the test extra has it)")
        pytest.skip("python -m build is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    # from a copy of what the sdist is made of: the build writes egg-info beside the sources, and tests
    # running in parallel must not build in the same tree
    src = tmp_path_factory.mktemp("checkout")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv (with pip) that sees the test environment's dependencies, but not apimon itself."""
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    # without ensurepip (slow): pip comes with the linked dependencies, `pip` is the venv's python -m pip
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=300)
    deps = root / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if entry.name.lower().startswith(("apimon", "__editable__", "_apimon")) or entry.suffix == ".pth":
            continue
        (deps / entry.name).symlink_to(entry)
    new_site = next((env_dir / "lib").glob("python3*/site-packages"))
    (new_site / "apimon-test-deps.pth").write_text(str(deps) + "\n")
    pip = env_dir / "bin" / "pip"
    pip.write_text(f'#!/bin/sh\nexec "{env_dir / "bin" / "python"}" -m pip "$@"\n')
    pip.chmod(0o755)
    return env_dir


def test_build_makes_the_apimon_cli_wheel_and_sdist(dist):
    assert sorted(p.name for p in dist.iterdir()) == sorted([WHEEL, SDIST])
    with zipfile.ZipFile(dist / WHEEL) as whl:
        names = whl.namelist()
        meta = Parser().parsestr(whl.read(f"apimon_cli-{VERSION}.dist-info/METADATA").decode())
        entry_points = whl.read(f"apimon_cli-{VERSION}.dist-info/entry_points.txt").decode()
    assert meta["Name"] == "apimon-cli" and meta["Version"] == VERSION
    assert "apimon = apimon_cli.cli:main" in entry_points  # the command stays `apimon`
    assert "apimon_cli/cli/__init__.py" in names and "apimon_cli/gateway/proxy.py" in names
    assert not any(n.startswith("tests/") for n in names)


def test_the_examples_pin_this_version_and_never_need_git():
    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (ROOT / "examples" / "ci" / name).read_text()
        doc = yaml.safe_load(text)
        assert doc.get("env", doc.get("variables"))["APIMON"] == f"apimon-cli=={VERSION}", name
        assert "git+" not in text, name  # a plans repository installs a release, not apimon's source
    gitlab = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())
    assert gitlab[".apimon"]["image"].startswith("python:3.")


def _gitlab_jobs(doc: dict) -> list[tuple[str, dict, list[str]]]:
    """(job, variables, commands) in file order: before_script (own or extended) + script."""
    jobs = []
    for name, job in doc.items():
        if name.startswith(".") or not isinstance(job, dict) or "script" not in job:
            continue
        base = doc.get(job.get("extends", ""), {}) if isinstance(job.get("extends"), str) else {}
        before = job.get("before_script", base.get("before_script", []))
        variables = {**base.get("variables", {}), **job.get("variables", {})}
        jobs.append((name, variables, [*before, *job["script"]]))
    return jobs


def _github_jobs(doc: dict) -> list[tuple[str, dict, list[str]]]:
    """(job, env, commands): the `run` steps apimon's own tools can run here (no `uses:` actions, no GitHub
    expressions, no `gh`)."""
    jobs = []
    for name, job in doc["jobs"].items():
        commands = []
        for step in job["steps"]:
            run = step.get("run")
            if run is None or "${{" in run or run.lstrip().startswith("gh "):
                continue
            commands.append(run)
        jobs.append((name, job.get("env", {}), commands))
    return jobs


@pytest.mark.parametrize(("example", "install"), [("gitlab-ci.yml", "pinned version"),
                                                  ("github-actions.yml", "wheel file")])
def test_the_ci_example_runs_in_a_repository_that_holds_only_a_plan(example, install, dist, venv, tmp_path):
    repo = tmp_path / "plans-repo"
    write_plan(repo / "plans" / "billing.yaml", PLAN)
    assert [p.relative_to(repo).as_posix() for p in repo.rglob("*")] == ["plans", "plans/billing.yaml"]

    doc = yaml.safe_load((ROOT / "examples" / "ci" / example).read_text())
    gitlab = example.startswith("gitlab")
    top = dict(doc.get("variables" if gitlab else "env", {}))
    top["PLAN"] = "plans/billing.yaml"
    if install == "wheel file":
        top["APIMON"] = str(dist / WHEEL)
    jobs = _gitlab_jobs(doc) if gitlab else _github_jobs(doc)
    assert len(jobs) >= 2 and all(cmds for _, _, cmds in jobs)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIMON_", "AWS_", "PIP_", "PYTHON", "VIRTUAL"))}
    env |= {"PATH": f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", "HOME": str(tmp_path / "home"),
            "NO_COLOR": "1", "COLUMNS": "200",
            # the package index: a folder with the built wheel; dependencies are already in the venv
            "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(dist), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "GITHUB_OUTPUT": str(tmp_path / "github_output")}
    ran = []
    for name, job_env, commands in jobs:
        script = "\n".join(commands)
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=repo,
                              env={**env, **{k: str(v) for k, v in {**top, **job_env}.items()}},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"job {name} failed:\n{script}\n--- stdout\n{proc.stdout[-3000:]}\n" \
                                     f"--- stderr\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr
        ran.append(script)

    every = "\n".join(ran)
    for command in ('pip install "$APIMON"', "apimon validate", "apimon plan", "apimon apply --plan-file"):
        assert command in every, command
    # apimon ran from the wheel installed by the example's own step, not from this checkout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import apimon_cli; print(apimon_cli.__file__)"],
                           capture_output=True, text=True, env=env, cwd=repo)
    assert str(venv) in where.stdout and str(ROOT / "src") not in where.stdout, where.stdout + where.stderr
    # the apply landed: the plan now shows no changes, from the state the pipeline made in the repository
    proc = subprocess.run(["apimon", "plan", "plans/billing.yaml", "--detailed-exitcode"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if gitlab:  # the scheduled invoice job wrote last month's invoice
        assert list(repo.glob("invoice-*.csv")), sorted(p.name for p in repo.iterdir())
