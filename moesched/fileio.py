"""Atomic file writes and strict JSON reads: nothing is ever half-written."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from moesched.errors import MoeschedError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    An interrupted write leaves the previous file (if any) intact.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_atomic(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file, turning a missing or malformed file into a one-line error."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise MoeschedError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise MoeschedError(f"{what} path is a directory: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MoeschedError(f"{what} file {path} is not valid JSON: {e}") from None
