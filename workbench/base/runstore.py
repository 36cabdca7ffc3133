"""Run folders on disk: atomic saves, strict loads, locks and crash recovery.

A run folder holds `model.pt` (a state dict, read with `torch.load(weights_only=True)`, PyTorch's
restricted unpickler: no code in the file can run) and `run.json` (configuration, metrics,
history, package versions and the SHA-256 of `model.pt`).

Saving: the new run is written into a temporary sibling folder `.NAME.<random>` (files fsync'ed,
folder permissions as for any new folder, not mkdtemp's 0700), which then takes the place of NAME
in one step: `renameat2(RENAME_EXCHANGE)` on Linux swaps the two folders atomically, so a reader
always finds a complete run (the old one or the new one), never a missing folder. Where the swap
is not available, NAME is first renamed to `.NAME.old` and the new folder renamed into place; a
crash between the two renames is repaired by the next save or load of NAME, which moves the old
run back. Writers of one NAME are serialised by a lock file `.NAME.lock` beside it (`flock`; the
`filelock` package where there is none: an OS lock, released by the kernel when its holder dies,
so a killed writer never blocks the others). Whoever holds the lock also removes leftovers of killed writers
(`.NAME.tmp-*` folders; the match is exact, so `exp` never touches `.exp.v2.old`).

Loading checks everything before it is trusted: the JSON's structure and the metrics' types and
ranges, the weights' checksum against the one recorded at save time (a truncated, swapped or
edited `model.pt` fails), the weights' names and shapes against the architecture, and their
finiteness. Each failure raises `RunFileError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from numbers import Integral, Real
from pathlib import Path
from typing import Iterator

import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from .fileio import fsync_dir

RUN_FILES = ("run.json", "model.pt")
META_KEYS = ("config", "clean_accuracy", "attack_success_rate", "history", "poison_indices",
             "train_seconds", "environment", "weights_sha256")


class RunFileError(ValueError):
    """A run folder's file is damaged or does not belong to the run it claims to be."""


# --- locks and recovery --------------------------------------------------------------------------

def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the writers' lock of run folder `path` (blocking). An OS lock (`flock`; the `filelock`
    package where there is none): the kernel releases it when its holder dies, so a killed
    writer never blocks the others."""
    lock = lock_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot lock the run folder {path} for writing: {exc.strerror}",
                      str(path)) from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        else:  # pragma: no cover - Windows
            from filelock import FileLock

            with FileLock(str(lock)):
                yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _is_leftover(name: str, path: Path) -> bool:
    """Whether folder entry `name` is a leftover of a writer of exactly `path`: `.NAME.old` or a
    temporary `.NAME.tmp-XXXXXXXX` (a prefix match would take other runs' folders: `exp` must
    never touch `.exp.v2.old`)."""
    return re.fullmatch(rf"\.{re.escape(path.name)}\.(old|tmp-[A-Za-z0-9_]+)", name) is not None


def recover(path: Path) -> None:
    """Repair what killed writers left around `path` (call with the lock held).

    A `.NAME.old` with no NAME is a user's run caught between the two renames of an overwrite:
    it goes back into place. `.NAME.tmp-*` folders are unfinished or superseded saves.
    """
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.rename(old, path)
        fsync_dir(path.parent)
    if not path.parent.is_dir():
        return
    for entry in os.scandir(path.parent):
        if entry.is_dir(follow_symlinks=False) and _is_leftover(entry.name, path):
            shutil.rmtree(entry.path, ignore_errors=True)


# --- saving --------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap folders a and b (Linux renameat2); False where the OS cannot."""
    if not sys.platform.startswith("linux") or not _exchange.available:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        _exchange.available = False
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22, 95):  # ENOSYS, EINVAL, EOPNOTSUPP: no exchange on this kernel/file system
        _exchange.available = False
        return False
    raise OSError(err, os.strerror(err), str(b))


_exchange.available = True


def _read_umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux /proc); else the
    set-and-restore dance, once, at import (not while other threads create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    um = os.umask(0o022)
    os.umask(um)
    return um


_UMASK = _read_umask()


def _umask_mode(mode: int = 0o777) -> int:
    return mode & ~_UMASK


def write_run(path: Path, state: dict, meta: dict, overwrite: bool) -> None:
    """Write a run folder at `path` (the caller holds `locked(path)`).

    meta: everything for run.json except the weights' checksum, which is added here.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"`path` {path} exists; pass overwrite=True to replace it.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot save a run to {path}: {exc.strerror}", str(path)) from None
    try:
        os.chmod(tmp, _umask_mode())  # mkdtemp's 0700 would hide runs on a shared data folder
        buf = io.BytesIO()
        torch.save(state, buf)
        weights = buf.getvalue()
        meta = {**meta, "weights_sha256": hashlib.sha256(weights).hexdigest()}
        for name, blob in (("model.pt", weights), ("run.json", json.dumps(meta, indent=1).encode())):
            with open(tmp / name, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp / name, _umask_mode(0o666))
        fsync_dir(tmp)
        if path.exists() and _exchange(tmp, path):
            fsync_dir(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old run
            return
        if path.exists():  # no atomic swap here: two renames, repaired by `recover` if cut
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
            fsync_dir(path.parent)
    except BaseException as exc:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise OSError(exc.errno, f"cannot save a run to {path}: {exc.strerror}",
                          str(path)) from exc
        raise


# --- loading -------------------------------------------------------------------------------------

def read_run_files(path: Path, retries: int = 50) -> tuple[dict, bytes]:
    """(run.json parsed, model.pt bytes) of one consistent version of folder `path`.

    Both files are read through one open handle of the folder, and the read is retried when a
    writer swapped the folder meanwhile, so a reader never pairs one save's JSON with another's
    weights.
    """
    need = f"`path` {path} must be a run folder holding run.json and model.pt"
    for _ in range(retries):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            if path.with_name(f".{path.name}.old").is_dir():  # a writer between its two renames
                time.sleep(0.01)
                continue
            raise FileNotFoundError(f"{need}; it does not exist.") from None
        except NotADirectoryError:
            raise FileNotFoundError(f"{need}; it is a file.") from None
        blobs: dict[str, bytes] = {}
        try:
            for name in RUN_FILES:
                try:
                    with os.fdopen(os.open(name, os.O_RDONLY, dir_fd=fd), "rb") as fh:
                        blobs[name] = fh.read()
                except FileNotFoundError:
                    pass
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        finally:
            os.close(fd)
        if same:  # the folder was not swapped while we read it
            missing = [n for n in RUN_FILES if n not in blobs]
            if missing:
                raise FileNotFoundError(f"{need}; {' and '.join(missing)} missing.")
            return _parse_json(path / "run.json", blobs["run.json"]), blobs["model.pt"]
    raise OSError(f"{path} kept changing while it was read ({retries} tries): is another "
                  "process saving it in a loop?")


def _parse_json(file: Path, blob: bytes) -> dict:
    try:
        meta = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFileError(f"{file} is not valid JSON ({exc}); the run is damaged.") from None
    if not isinstance(meta, dict):
        raise RunFileError(f"{file} must hold a JSON object; got {type(meta).__name__}.")
    return meta


def check_meta(file: Path, meta: dict) -> None:
    """The types and ranges of run.json's fields (what `BackdoorRun` and its repr rely on)."""
    # runs saved before the checksum existed load too (load_run warns): their weights are still
    # checked for names, shapes and finite values
    missing = [k for k in META_KEYS if k not in meta and k != "weights_sha256"]
    if missing:
        raise RunFileError(f"{file} lacks {', '.join(missing)}; it was not written by this "
                           "version of the workbench or is damaged.")

    def bad(field: str, what: str):
        raise RunFileError(f"{file}: `{field}` must be {what}; got {meta.get(field, None)!r}"[:300])

    for k in ("clean_accuracy", "attack_success_rate"):
        v = meta[k]
        if isinstance(v, bool) or not isinstance(v, Real) or not (math.isnan(v) or 0 <= v <= 1):
            bad(k, "a number in [0, 1]")
        if k == "clean_accuracy" and math.isnan(v):
            bad(k, "a number in [0, 1]")
    v = meta["train_seconds"]
    if isinstance(v, bool) or not isinstance(v, Real) or not v >= 0:
        bad("train_seconds", "a number >= 0")
    if not isinstance(meta["history"], list) or not all(
            isinstance(e, dict) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                        for x in e.values()) for e in meta["history"]):
        bad("history", "a list of {name: number} entries")
    if not isinstance(meta["poison_indices"], list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in meta["poison_indices"]):
        bad("poison_indices", "a list of ints >= 0")
    if not isinstance(meta["environment"], dict):
        bad("environment", "an object")
    sha = meta.get("weights_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        bad("weights_sha256", "a SHA-256 hex digest")
    cfg = meta["config"]
    if not isinstance(cfg, dict):
        bad("config", "an object")
    shape = cfg.get("image_shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise RunFileError(f"{file}: `config.image_shape` must be 3 positive ints; got {shape!r}.")
    k = cfg.get("num_classes")
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 2:
        raise RunFileError(f"{file}: `config.num_classes` must be an int >= 2; got {k!r}.")
    for key in ("model", "dataset"):
        if not isinstance(cfg.get(key), str):
            raise RunFileError(f"{file}: `config.{key}` must be a string; got {cfg.get(key)!r}.")
    if not isinstance(cfg.get("trigger"), dict):
        raise RunFileError(f"{file}: `config.trigger` must be an object; got {cfg.get('trigger')!r}.")
    t = cfg.get("target")
    if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < k:
        raise RunFileError(f"{file}: `config.target` must be a class in [0, {k - 1}]; got {t!r}.")


def load_state(file: Path, blob: bytes, expected_sha256: str | None, model: torch.nn.Module) -> dict:
    """The state dict in `blob`, checked against its checksum (None: a run saved before
    checksums, not checked) and against `model`'s weights."""
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise RunFileError(f"{file} does not match the checksum recorded in run.json: it was "
                           "truncated, edited or replaced after the run was saved.")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise RunFileError(f"{file} is not a readable weights file ({type(exc).__name__}: "
                           f"{str(exc)[:200]}).") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunFileError(f"{file} is not a state dict of tensors.")
    want = model.state_dict()
    if set(state) != set(want):
        extra, lack = sorted(set(state) - set(want)), sorted(set(want) - set(state))
        raise RunFileError(f"{file} does not hold the weights of this architecture (unexpected: "
                           f"{extra[:5]}, missing: {lack[:5]}).")
    for name, v in state.items():
        if v.shape != want[name].shape:
            raise RunFileError(f"{file}: weight {name!r} has shape {tuple(v.shape)}; the "
                               f"architecture needs {tuple(want[name].shape)}.")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise RunFileError(f"{file}: weight {name!r} holds NaN or infinite values.")
    return state


__all__ = ["RunFileError", "locked", "recover", "write_run", "read_run_files", "check_meta",
           "load_state", "lock_path"]
