"""The working tree as one tarball: what git tracks plus untracked files it does not ignore.

Copying one archive instead of the directory keeps .venv, .git, build outputs and data that
.gitignore excludes off the workers, and costs one scp per worker instead of one per file.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from pathlib import Path

from bertjax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
TARBALL = ROOT / "build" / "launch" / "bertjax-src.tar.gz"
# A tree this large almost always holds data or outputs that .gitignore should exclude.
WARN_BYTES = 200 * 2**20


def tree_files(root: Path = ROOT) -> list[str]:
    """Relative paths git would commit from `root`, sorted; files deleted locally are left out."""
    try:
        argv = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                "--exclude-standard"]
        out = subprocess.run(argv, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip() or str(e)
        raise UserError(f"cannot list the files of {root} with git ({detail}); "
                        "run the launcher from a git checkout of bertjax") from None
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if os.path.isfile(root / n)]


def pack(root: Path = ROOT, out: Path = TARBALL) -> tuple[int, int, str]:
    """Writes the tarball (to a temporary name, renamed when complete).

    Returns (number of files, bytes, sha256 prefix). The hash identifies the synced tree, so
    `status` can show whether every worker runs the same code.
    """
    files = tree_files(root)
    if not files:
        raise UserError(
            f"git lists no files under {root}; run the launcher from a bertjax checkout")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for name in files:
            tar.add(root / name, arcname=name, recursive=False)
    data = tmp.read_bytes()
    os.replace(tmp, out)
    return len(files), len(data), hashlib.sha256(data).hexdigest()[:12]
