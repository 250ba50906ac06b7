"""Writing the site: the whole directory is replaced at once, and only if apimon wrote it.

The files go to a fresh sibling directory first, which then takes the place of ``--out``: a build that fails
half way leaves the previous site as it was, and a statement of a subscriber who left the plan does not
linger. A non-empty ``--out`` without apimon's marker file (``.apimon-portal``) is refused: apimon never
deletes what it did not write (as `apply` never touches gateway resources it does not own). A symlink as
``--out`` is written through: the directory it points to is replaced, the symlink stays.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

MARKER = ".apimon-portal"


class SiteError(Exception):
    pass


def write_site(out: Path, files: Mapping[str, bytes]) -> None:
    out = Path(out)
    if out.is_symlink():  # written through, never replaced (as every --out: apimon_cli.outfile)
        real = Path(os.path.realpath(out))
        if not real.is_dir():
            raise SiteError(f"--out {out} is a symlink to {real}, which is not a directory; apimon writes "
                            "through a symlink only to an existing directory")
        out = real
    if out.exists() and not out.is_dir():
        raise SiteError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SiteError(f"--out {out} is not empty and was not written by apimon portal build (no {MARKER}); "
                        "give an empty or new directory")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.apimon-", dir=parent))
    except OSError as exc:
        raise SiteError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        os.chmod(tmp, 0o755)  # a site to publish: readable by the web server
        for rel, data in files.items():
            path = tmp / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise SiteError(f"refusing to write outside the site: {rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.chmod(path, 0o644)
        for d in [p for p in tmp.rglob("*") if p.is_dir()]:
            os.chmod(d, 0o755)
        (tmp / MARKER).write_text("written by `apimon portal build`; the whole directory is replaced on rebuild\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SiteError(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
