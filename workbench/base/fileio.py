"""Files the workbench writes and reads: atomic writes, strict JSON.

Every file the workbench writes (run metadata, sweep tables, reports, summaries) goes through
`atomic_write`: a temporary file of the writer's own in the same folder (so concurrent writers never
share one), flushed and fsync'ed, then `os.replace`d over the target, then the folder fsync'ed. A
reader sees the old content or the new one, never half a file; a crash leaves at most a stray
`.NAME.*.tmp` file, never a damaged target.

Every JSON file it reads goes through `read_json`: plain `json` (no code can run from the file) and
errors that name the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Replace file `path` by `data` (text is written as UTF-8) atomically and durably.

    mode: permission bits of the new file (mkstemp's own 0600 would hide shared results).
    """
    path = Path(path)
    if not isinstance(data, (str, bytes)):
        raise TypeError(f"`data` must be str or bytes; got {type(data).__name__}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json(path: str | os.PathLike, obj: Any, **kwargs) -> Path:
    """`atomic_write` of `json.dumps(obj, indent=1, **kwargs)`."""
    kwargs.setdefault("indent", 1)
    return atomic_write(path, json.dumps(obj, **kwargs))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON file, raising ValueError naming the file (and line) when it is not JSON.

    Plain `json`: no object hooks, nothing in the file can run code. Missing files raise
    FileNotFoundError naming them.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist.") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}).") from None



__all__ = ["atomic_write", "write_json", "read_json", "fsync_dir"]
