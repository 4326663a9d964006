"""Safe file output and strict JSON input: nothing is ever half-written or overwritten by mistake.

* :func:`check_outputs` refuses, before any work, an output path that cannot be written
  safely: empty, a directory, a special file (``/dev/null``, a fifo: a device node is never
  replaced), in a missing folder (folders are never created), in a folder this process may
  not write, the same file as an input, or the same file as another output.
* :func:`write_atomic` writes through a temporary file in the target's folder and a rename;
  an interrupted write (an exception, Ctrl-C, SIGTERM via :mod:`moesched.cli`) removes the
  temporary file and leaves the previous file intact. A symbolic link is written through:
  its target is replaced and the link stays.
* :func:`read_json` turns a missing, unreadable, malformed or absurdly nested file into one
  line (a name ending in ``.gz`` is read through gzip); :func:`find_nonfinite` finds a
  NaN/Infinity inside what it read.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import stat
import tempfile
import zlib
from pathlib import Path
from typing import Any, Mapping

from moesched.errors import MoeschedError

PathLike = str | os.PathLike


def _target(path: PathLike) -> Path:
    """The file a write to ``path`` replaces: a symbolic link's final target, else ``path``."""
    p = Path(path)
    return Path(os.path.realpath(p)) if p.is_symlink() else p


def _same_file(a: PathLike, b: PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: compare where they would be
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(flag: str, path: PathLike | None) -> None:
    """Raise :class:`MoeschedError` unless ``path`` (given as ``flag``) can be written by
    :func:`write_atomic`: see the module docstring for what is refused."""
    if path is None:
        return
    if str(path).strip() == "":
        raise MoeschedError(f"{flag}: the output path is empty")
    target = _target(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise MoeschedError(f"{flag} {path}: cannot use it as an output ({e.strerror})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise MoeschedError(f"{flag} {path} is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise MoeschedError(f"{flag} {path} is a special file (device, fifo or socket); refusing to replace it")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise MoeschedError(f"{flag} {path}: folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MoeschedError(f"{flag} {path}: folder {folder} is not writable")
    try:  # os.access says yes to root everywhere; creating the temporary file is the real test
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise MoeschedError(f"{flag} {path}: cannot create files in folder {folder} ({e.strerror or e})") from None


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """Check every output (``{flag: path}``, None = not requested) with :func:`check_output`,
    and that no output is the same file as an input (``{flag: path}``) or as another output.
    Call it before any work, so a bad path costs nothing."""
    given = [(f, p) for f, p in outputs.items() if p is not None]
    for flag, path in given:
        check_output(flag, path)
    for i, (flag, path) in enumerate(given):
        for flag_in, path_in in (inputs or {}).items():
            if path_in is not None and str(path_in) and _same_file(path, path_in):
                raise MoeschedError(f"{flag} {path} is the same file as {flag_in} {path_in}; refusing to overwrite an input")
        for flag2, path2 in given[i + 1:]:
            if _same_file(path, path2):
                raise MoeschedError(f"{flag} and {flag2} name the same file {path}")


def write_atomic(path: PathLike, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    An interrupted write leaves the previous file (if any) intact and no temporary file.
    A symbolic link is written through (its target is replaced). A missing folder is
    created for library callers; the CLI refuses one before any work (:func:`check_outputs`).
    """
    target = _target(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MoeschedError(f"cannot write {path}: {e.strerror or e}") from None
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise MoeschedError(f"cannot write {path}: {e.strerror or e}") from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise MoeschedError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON; NaN and Infinity are refused (they are
    not JSON), so every file written here can be read back by any JSON reader. A name ending
    in ``.gz`` is written gzip-compressed (as ``gzip -9n``), as :func:`read_json` reads it."""
    try:
        text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False)
    except ValueError as e:
        raise MoeschedError(f"cannot write {path}: {find_nonfinite(obj) or e} (not valid JSON)") from None
    if str(path).endswith(".gz"):
        write_atomic(path, gzip.compress((text + "\n").encode(), 9, mtime=0))
    else:
        write_atomic(path, text + "\n")


def check_input(path: PathLike, what: str) -> None:
    """Raise :class:`MoeschedError` unless ``path`` is an existing regular file (symbolic
    links followed)."""
    if str(path).strip() == "":
        raise MoeschedError(f"{what} path is empty")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MoeschedError(f"{what} file not found: {path}") from None
    except OSError as e:
        raise MoeschedError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise MoeschedError(f"{what} path is a directory: {path}")
    if not stat.S_ISREG(st.st_mode):
        raise MoeschedError(f"{what} path {path} is not a regular file (device, fifo or socket)")


def read_json(path: PathLike, what: str) -> Any:
    """Read a JSON file, turning a missing, unreadable or malformed file into a one-line
    error. Only regular files are read (a fifo or device would block or never end). A name
    ending in ``.gz`` is gzip-compressed JSON (the measured profiles under ``results/``)."""
    check_input(path, what)
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return json.load(f)
        with open(path) as f:
            return json.load(f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise MoeschedError(f"{what} file {path} is not valid gzip: {e or 'truncated'}") from None
    except FileNotFoundError:
        raise MoeschedError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise MoeschedError(f"{what} path is a directory: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MoeschedError(f"{what} file {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise MoeschedError(f"{what} file {path} is nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise MoeschedError(f"{what} file {path} is not valid JSON: {e}") from None
    except OSError as e:
        raise MoeschedError(f"cannot read {what} file {path}: {e.strerror or e}") from None


def find_nonfinite(obj: Any) -> str | None:
    """Where the first NaN or infinite number in ``obj`` is, as ``KEY.PATH is NaN`` or
    ``KEY.PATH is infinite`` (list items as ``[i]``); None if there is none. Iterative, so
    any depth json.load accepts is fine."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        prefix, x = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            return f"{prefix or '<top>'} is {'NaN' if math.isnan(x) else 'infinite'}"
        if isinstance(x, dict):
            stack.extend(reversed([(f"{prefix}.{k}" if prefix else str(k), v) for k, v in x.items()]))
        elif isinstance(x, (list, tuple)):
            stack.extend(reversed([(f"{prefix}[{i}]", v) for i, v in enumerate(x)]))
    return None
