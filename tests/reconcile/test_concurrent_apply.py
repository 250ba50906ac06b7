"""Issue 20.3: two applies at once never end in a state that matches neither plan.

The apply lock is taken before the gateway is read, so the second apply waits and plans against what the
first one left (or, after the lock timeout, refuses); a gateway that moves between the read and the writes
(another machine, a saved plan) refuses the apply with "the gateway changed while you were planning".
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import run_cli, write_plan

N = 2000


def _local_plan(n: int, *, product: str, email: str, drop_every: int = 0) -> str:
    subs = "".join(f"  s{i:05d}: {{product: {product}, email: {email}}}\n"
                   for i in range(n) if not (drop_every and i % drop_every == 0))
    return ("apimon: 1\ntarget: {provider: local, local: {state_dir: state}}\n"
            "products:\n  free: {display_name: Free, pricing: {model: free}}\n"
            "  pro: {display_name: Pro, pricing: {model: flat, fee: \"10.00\"}}\n"
            "subscribers:\n" + subs)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "APIMON_"))}
    return env | {"NO_COLOR": "1", "COLUMNS": "200"} | extra


def _apply_together(plans, cwd, env) -> list[tuple[int, str, str]]:
    # output into files, not pipes: a waiting process must not stall the other on a full pipe
    procs = []
    for p in plans:
        with open(cwd / f"{p.stem}.out", "w") as o, open(cwd / f"{p.stem}.err", "w") as e:
            procs.append(subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "apply", str(p), "--auto-approve"],
                                          cwd=cwd, env=env, stdout=o, stderr=e, text=True))
    out = []
    for proc, p in zip(procs, plans, strict=True):
        proc.wait(timeout=300)
        out.append((proc.returncode, (cwd / f"{p.stem}.out").read_text(), (cwd / f"{p.stem}.err").read_text()))
    for code, stdout, stderr in out:
        assert "Traceback" not in stderr and "unexpected error" not in stderr, stderr
        assert code in (0, 1), (code, stdout, stderr)
        if code == 1:  # the only acceptable refusals: the lock timed out, or the gateway moved; nothing applied
            assert ("another apimon apply holds the lock" in stderr
                    or "the gateway changed while you were planning" in stderr), stderr
    return out


def test_two_different_applies_at_once_end_in_one_of_the_two_plans(tmp_path):
    # A: 2,000 subscribers on free; B: every third one gone, the rest moved to pro with another email
    a = write_plan(tmp_path / "a.yaml", _local_plan(N, product="free", email="a@example.com"))
    b = write_plan(tmp_path / "b.yaml", _local_plan(N, product="pro", email="b@example.com", drop_every=3))
    run_cli("apply", str(a), "--auto-approve", cwd=tmp_path)  # both start from A applied...
    assert run_cli("plan", str(a), "--detailed-exitcode", cwd=tmp_path).code == 0
    c = write_plan(tmp_path / "c.yaml", _local_plan(N, product="free", email="c@example.com", drop_every=2))
    results = _apply_together([b, c], tmp_path, _env(APIMON_LOCK_TIMEOUT="240"))
    assert [r[0] for r in results] == [0, 0], results  # with a long enough lock wait, both apply

    # ...and the state is exactly one of the plans (the one applied last), never a mix of the two
    matches = [p.name for p in (b, c) if run_cli("plan", str(p), "--detailed-exitcode", cwd=tmp_path).code == 0]
    assert len(matches) == 1, matches
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        rows = conn.execute("SELECT product, email, count(*) FROM subscribers GROUP BY 1, 2").fetchall()
    expected = {"b.yaml": [("pro", "b@example.com", N - len(range(0, N, 3)))],
                "c.yaml": [("free", "c@example.com", N // 2)]}
    assert rows == expected[matches[0]]
    # the one that waited planned afresh against what the first one left: it did not re-create the deletes
    # of the first, nor fail on them
    assert all("already gone" not in r[1] for r in results)


def test_a_second_apply_that_cannot_get_the_lock_refuses_and_changes_nothing(tmp_path):
    import fcntl

    plan = write_plan(tmp_path / "a.yaml", _local_plan(3, product="free", email="a@example.com"))
    (tmp_path / "state").mkdir()
    fd = os.open(tmp_path / "state" / "apply.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another apply is running
    try:
        r = run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path, env={"APIMON_LOCK_TIMEOUT": "0.5"})
    finally:
        os.close(fd)
    assert r.code == 1 and "another apimon apply holds the lock" in r.stderr, r.output
    assert not (tmp_path / "state" / "state.db").exists()


def test_a_bad_lock_timeout_is_a_clear_error(tmp_path):
    plan = write_plan(tmp_path / "a.yaml", _local_plan(1, product="free", email="a@example.com"))
    r = run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path, env={"APIMON_LOCK_TIMEOUT": "soon"})
    assert r.code == 1 and "APIMON_LOCK_TIMEOUT='soon' is not a number of seconds" in r.stderr, r.output


def test_a_local_gateway_that_changed_after_the_read_refuses_the_apply(tmp_path):
    """The engine's check under the lock (apply_plan without the lock held since the read)."""
    from apimon_cli.reconcile.engine import GatewayChanged, apply_plan, make_plan

    a = write_plan(tmp_path / "a.yaml", _local_plan(5, product="free", email="a@example.com"))
    b = write_plan(tmp_path / "b.yaml", _local_plan(5, product="pro", email="b@example.com"))
    run_cli("apply", str(a), "--auto-approve", cwd=tmp_path)
    run = make_plan([str(b)])  # read without the lock, as `plan` does
    try:
        assert run_cli("apply", str(write_plan(tmp_path / "c.yaml", _local_plan(
            4, product="free", email="a@example.com"))), "--auto-approve", cwd=tmp_path).code == 0
        with pytest.raises(GatewayChanged, match="the gateway changed while you were planning"):
            apply_plan(run)
    finally:
        run.close()
    assert run_cli("plan", str(tmp_path / "c.yaml"), "--detailed-exitcode", cwd=tmp_path).code == 0


# ---------------------------------------------------------------- a cloud: AWS API Gateway (moto + front)

AWS_PLAN = """
apimon: 1
target: {{provider: aws, aws: {{region: us-east-1}}}}
products:
  free: {{display_name: Free, apis: [petstore/prod], rate_limit: {{rate: 5, burst: 10}}}}
  pro: {{display_name: Pro, apis: [petstore/prod], rate_limit: {{rate: {rate}, burst: 100}}}}
subscribers:
{subs}"""


def _aws_plan(n: int, product: str, rate: int, drop_every: int = 0) -> str:
    subs = "".join(f"  c{i:03d}: {{product: {product}}}\n"
                   for i in range(n) if not (drop_every and i % drop_every == 0))
    return AWS_PLAN.format(rate=rate, subs=subs)


@pytest.fixture
def aws_fake():
    from fakes.aws_gateway import AwsFake

    with AwsFake() as fake:
        fake.add_rest_api("petstore", ["prod"])
        yield fake


def _aws_env(fake, tmp_path, **extra) -> dict:
    return _env(**{"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                   "AWS_ENDPOINT_URL": fake.endpoint_url, "APIMON_AWS_QUOTA_SCALE": "200",
                   "APIMON_LOCK_DIR": str(tmp_path / "locks")} | extra)


def test_two_applies_at_once_on_aws_end_in_one_of_the_two_plans(aws_fake, tmp_path):
    a = write_plan(tmp_path / "a.yaml", _aws_plan(40, "free", 50))
    b = write_plan(tmp_path / "b.yaml", _aws_plan(40, "pro", 70, drop_every=2))
    env = _aws_env(aws_fake, tmp_path, APIMON_LOCK_TIMEOUT="240")
    results = _apply_together([a, b], tmp_path, env)
    assert [r[0] for r in results] == [0, 0], results
    codes = {p.name: subprocess.run([sys.executable, "-m", "apimon_cli.cli", "plan", str(p), "--detailed-exitcode"],
                                    cwd=tmp_path, env=env, capture_output=True, text=True).returncode
             for p in (a, b)}
    assert sorted(codes.values()) == [0, 2], codes  # exactly one plan matches the gateway
    keys = aws_fake.moto_client().get_api_keys(limit=500)["items"]
    assert len(keys) == (40 if codes["a.yaml"] == 0 else 20)  # no duplicate keys from the loser's stale diff


def test_an_aws_gateway_that_moved_while_planning_refuses_the_apply(aws_fake, tmp_path, monkeypatch):
    """Another machine's apply (a lock this machine cannot see) lands between the read and the writes."""
    from apimon_cli.reconcile.engine import GatewayChanged, apply_plan, make_plan

    for name, value in _aws_env(aws_fake, tmp_path).items():
        monkeypatch.setenv(name, value)
    a = write_plan(tmp_path / "a.yaml", _aws_plan(3, "free", 50))
    b = write_plan(tmp_path / "b.yaml", _aws_plan(3, "pro", 70))
    run = make_plan([str(b)], lock=True)  # apply: locked, read, (the prompt)...
    try:
        other = _aws_env(aws_fake, tmp_path, APIMON_LOCK_DIR=str(tmp_path / "elsewhere"))
        done = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "apply", str(a), "--auto-approve"],
                              cwd=tmp_path, env=other, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        aws_fake.reset_counts()
        with pytest.raises(GatewayChanged, match="the gateway changed while you were planning"):
            apply_plan(run)
        writes = [op for op in aws_fake.counts if op.startswith(("Create", "Update", "Delete", "Tag"))]
        assert writes == [], writes
    finally:
        run.close()


def test_a_saved_plan_applied_after_the_gateway_changed_is_refused(aws_fake, tmp_path):
    env = _aws_env(aws_fake, tmp_path)
    a = write_plan(tmp_path / "a.yaml", _aws_plan(3, "free", 50))
    b = write_plan(tmp_path / "b.yaml", _aws_plan(2, "pro", 70))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "apimon_cli.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True)

    assert cli("plan", str(b), "--out", "b.saved").returncode == 0
    assert cli("apply", str(a), "--auto-approve").returncode == 0
    r = cli("apply", "--plan-file", "b.saved")
    assert r.returncode == 1 and "the gateway changed while you were planning" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert cli("plan", str(a), "--detailed-exitcode").returncode == 0  # nothing of b was applied
