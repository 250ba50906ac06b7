"""Every --out goes through one writer (apimon_cli.outfile): atomic, owner-only, never replacing a FIFO, a
device or a symlink, and a full disk or a bad directory is one clear line that keeps the previous file.

Issue 20 item 2 and issue 18 item 5 (--out part). Real FIFOs and symlinks in tmp_path (never a real device);
a full disk by RLIMIT_FSIZE in the subprocess, and by a small tmpfs in a private mount namespace
(`unshare -r -m`) where the machine allows one."""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import run_cli, write_plan

from apimon_cli.outfile import OutFileError, open_out, write_out

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
billing: {currency: USD, metric: success}
products:
  starter:
    display_name: Starter
    pricing: {model: per_unit, fee: "29.00", included: 10, unit_price: "0.001"}
subscribers:
  acme: {product: starter}
  globex: {product: starter}
"""


@pytest.fixture
def billed(tmp_path):
    """An applied local plan with usage pulled into its ledger."""
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)", [
            ("acme", "starter", "2026-11-02", "success", 1200), ("globex", "starter", "2026-11-03", "success", 7)])
    assert run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30").code == 0
    return plan


class FifoReader(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.data = path, b""

    def run(self):
        with open(self.path, "rb") as fh:  # blocks until the writer opens it, as `cat fifo` would
            self.data = fh.read()


def _fifo(tmp_path: Path) -> tuple[Path, FifoReader]:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    return fifo, reader


# ---------------------------------------------------------------- the writer itself


def test_new_and_replaced_files_are_owner_only_and_complete(tmp_path):
    target = tmp_path / "a.txt"
    write_out(target, "one\n")
    assert target.read_text() == "one\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o644)  # a wider mode on the old file is not kept: the new content is private
    write_out(target, "two\n")
    assert target.read_text() == "two\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temporary file left


def test_an_error_while_writing_keeps_the_previous_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("previous\n")
    with pytest.raises(RuntimeError), open_out(target) as fh:
        fh.write("half")
        raise RuntimeError("killed half way")
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_symlink_is_written_through_and_stays_a_symlink(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    write_out(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new\n"


def test_a_symlink_to_a_file_outside_its_directory_is_refused_and_the_file_untouched(tmp_path):
    victim = tmp_path / "elsewhere" / "victim.txt"  # as /etc/passwd behind a link planted in a checkout
    victim.parent.mkdir()
    victim.write_text("precious\n")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    link = checkout / "report.csv"
    link.symlink_to(victim)
    with pytest.raises(OutFileError, match=f"symlink to {victim}, outside {checkout}"):
        write_out(link, "x")
    assert victim.read_text() == "precious\n" and link.is_symlink()
    (checkout / "2026").mkdir()
    inner = checkout / "2026" / "11.csv"
    inner.write_text("old")
    link.unlink()
    link.symlink_to("2026/11.csv")  # below the link's directory: written through
    write_out(link, "new")
    assert inner.read_text() == "new" and link.is_symlink()


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "elsewhere" / "nothing.txt")
    with pytest.raises(OutFileError, match="symlink to .*nothing.txt, which does not exist"):
        write_out(link, "x")
    assert link.is_symlink() and not (tmp_path / "elsewhere").exists()


def test_a_fifo_is_written_into_never_replaced(tmp_path):
    fifo, reader = _fifo(tmp_path)
    write_out(fifo, "through the pipe\n")
    reader.join(10)
    assert reader.data == b"through the pipe\n"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_to_a_fifo_is_written_into_through_the_link(tmp_path):
    fifo, reader = _fifo(tmp_path)  # as /dev/stdout -> /proc/self/fd/1 -> a pipe
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    write_out(link, "via the link\n")
    reader.join(10)
    assert reader.data == b"via the link\n"
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("where, message", [
    ("missing/a.txt", "the directory .*missing does not exist"),
    (".", "is a directory"),
])
def test_bad_targets_are_clear_errors_naming_the_path(tmp_path, where, message):
    with pytest.raises(OutFileError, match=message) as info:
        write_out(tmp_path / where, "x")
    assert str(tmp_path) in str(info.value)


# ---------------------------------------------------------------- every command's --out


def test_invoice_and_usage_export_write_into_a_fifo(billed, tmp_path):
    fifo, reader = _fifo(tmp_path)
    r = run_cli("invoice", str(billed), "--period", "2026-11", "--format", "csv", "--out", str(fifo))
    reader.join(10)
    assert r.code == 0, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # before: replaced by a regular file
    assert b"acme" in reader.data and reader.data.startswith(b"invoice_id,")
    fifo.unlink()
    fifo, reader = _fifo(tmp_path)
    r = run_cli("usage", "export", "--plan", str(billed), "--out", str(fifo))
    reader.join(10)
    assert r.code == 0, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and b"globex" in reader.data


def test_plan_and_import_out_write_through_a_symlink_owner_only(billed, tmp_path):
    for args in (["plan", str(billed)], ["import", "--provider", "local", "--state-dir", str(tmp_path / "state")]):
        real = tmp_path / f"{args[0]}-real.out"
        real.write_text("old\n")
        real.chmod(0o644)
        link = tmp_path / f"{args[0]}-link.out"
        link.symlink_to(real.name)
        r = run_cli(*args, "--out", str(link))
        assert r.code == 0, r.output
        assert link.is_symlink(), args  # before: `plan --out` followed it, `import --out` too, but kept 0644
        assert real.read_text() != "old\n"
        assert stat.S_IMODE(real.stat().st_mode) == 0o600, args


def test_report_out_is_written_through_a_symlink(billed, tmp_path):
    real = tmp_path / "report-real.html"
    real.write_text("old")
    link = tmp_path / "report.html"
    link.symlink_to(real)
    r = run_cli("report", str(billed), "--period", "2026-11", "--out", str(link))
    assert r.code == 0, r.output
    assert link.is_symlink() and "<html" in real.read_text().lower()


def test_portal_out_symlink_to_a_directory_stays_a_symlink(billed, tmp_path):
    real = tmp_path / "site-real"
    real.mkdir()
    link = tmp_path / "site"
    link.symlink_to(real)
    r = run_cli("portal", "build", str(billed), "--period", "2026-11", "--out", str(link))
    assert r.code == 0, r.output
    assert link.is_symlink() and (real / "index.html").exists()


def test_missing_directory_and_dangling_symlink_are_one_line_errors(billed, tmp_path):
    missing = tmp_path / "no-such-dir" / "inv.csv"
    r = run_cli("invoice", str(billed), "--period", "2026-11", "--format", "csv", "--out", str(missing))
    assert r.code == 1 and r.stderr.strip() == f"error: cannot write {missing}: the directory {missing.parent} " \
                                               "does not exist"
    dangling = tmp_path / "saved.json"
    dangling.symlink_to(tmp_path / "victim.json")
    r = run_cli("plan", str(billed), "--out", str(dangling))
    assert r.code == 1 and "which does not exist" in r.stderr
    assert not (tmp_path / "victim.json").exists()


def _big_plan(n: int) -> str:
    subs = "".join(f"  subscriber-{i:05d}: {{product: free, email: s{i}@example.com}}\n" for i in range(n))
    return ("apimon: 1\ntarget: {provider: local, local: {state_dir: state}}\n"
            "products:\n  free: {display_name: Free, pricing: {model: free}}\nsubscribers:\n" + subs)


def test_file_size_limit_keeps_the_previous_saved_plan(tmp_path):
    """RLIMIT_FSIZE (`ulimit -f`): the write fails with EFBIG part way (Python ignores SIGXFSZ)."""
    plan = write_plan(tmp_path / "plan.yaml", _big_plan(1500))
    saved = tmp_path / "saved.json"
    saved.write_text("previous saved plan\n")
    limit = 256 * 1024
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIMON_", "AWS_"))} | {"NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "apimon_cli.cli", "plan", str(plan), "--out", str(saved)],
        env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: cannot write {saved}: File too large" in proc.stderr
    assert "the previous file is unchanged" in proc.stderr
    assert saved.read_text() == "previous saved plan\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


needs_tmpfs = pytest.mark.skipif(not _can_unshare(), reason="no private mount namespace here (unshare -r -m)")


def _in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIMON_", "AWS_"))} | {"NO_COLOR": "1",
                                                                                          "PY": sys.executable}
    return subprocess.run(["unshare", "-r", "-m", "sh", "-ec", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_tmpfs
def test_a_full_disk_keeps_the_previous_file_and_says_so(billed, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
        mount -t tmpfs -o size=64k tmpfs {disk}
        printf 'previous export\\n' > {disk}/usage.csv
        head -c 65536 /dev/zero > {disk}/filler 2>/dev/null || true  # the rest of the disk
        rc=0; "$PY" -m apimon_cli.cli import --provider local --state-dir {tmp_path}/state --out {disk}/usage.csv \
            || rc=$?
        echo "rc=$rc"; cat {disk}/usage.csv; ls -a {disk}
    """
    proc = _in_namespace(script, tmp_path)
    assert "Traceback" not in proc.stderr
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr
    assert "No space left on device" in proc.stderr and "the previous file is unchanged" in proc.stderr
    assert "previous export" in proc.stdout
    listed = proc.stdout.split("previous export", 1)[1].split()
    assert sorted(listed) == [".", "..", "filler", "usage.csv"]  # no temporary file left behind


@needs_tmpfs
def test_a_read_only_directory_is_a_clear_error(billed, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"""
        mount -t tmpfs -o ro,size=64k tmpfs {ro}
        rc=0; "$PY" -m apimon_cli.cli invoice {billed} --period 2026-11 --format csv --out {ro}/inv.csv || rc=$?
        echo "rc=$rc"
    """
    proc = _in_namespace(script, tmp_path)
    assert "rc=1" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"error: cannot write {ro}/inv.csv: the directory {ro} is not writable (Read-only file system)" \
        in proc.stderr


def test_a_streamed_write_over_the_size_limit_keeps_the_previous_file(tmp_path):
    """The streaming path (invoice, usage export) under RLIMIT_FSIZE, in a subprocess."""
    target = tmp_path / "export.csv"
    target.write_text("previous\n")
    code = (
        "import sys\n"
        "from apimon_cli.outfile import OutFileError, open_out\n"
        "try:\n"
        f"    with open_out({str(target)!r}, newline='') as fh:\n"
        "        for i in range(100000):\n"
        "            fh.write(f'row-{i:08d},' * 4 + '\\r\\n')\n"
        "except OutFileError as exc:\n"
        "    print(exc)\n"
        "    sys.exit(3)\n")
    limit = 64 * 1024
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"cannot write {target}: File too large") and "previous file is unchanged" \
        in proc.stdout
    assert target.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.csv"]
