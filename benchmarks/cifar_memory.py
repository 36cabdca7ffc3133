"""Peak memory of reading CIFAR-10 batches with `verify_checksums=False`, against the file's size.

Three cases, each in a fresh temporary folder:

* legit: a synthetic CIFAR-10 (six batches of random images, as the official files are written:
  Python 2 cPickle, protocol 2) loaded whole by `load_dataset("cifar10", verify_checksums=False)`;
  the peak is compared with the loaded dataset's own size (float32 images, int64 labels).
* crafted copies: one batch file of a 1 MiB string and N calls `_codecs.encode(<that string>,
  'latin1')` (7 bytes each, through the pickle memo): each call built a new 1 MiB bytes object,
  so a 1 MiB file could ask for gigabytes.
* crafted flood: one batch file of a million EMPTY_LIST opcodes (one byte each, a 72-byte list
  apiece).

Each case runs in its own process: the peak is the growth of that process's peak resident memory
(getrusage's ru_maxrss) over what it held after its imports, in MiB, and its ratio to the dataset
(legit) or to the file read (crafted). Run it before and after a change (the same checkout, or
another with PYTHONPATH=<checkout>); it writes only under a temporary folder.

    python benchmarks/cifar_memory.py [--images 2000] [--copies 200]
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import workbench as wb  # noqa: E402
from workbench import data as wb_data  # noqa: E402


def crafted_copies(copies: int, size: int = 1 << 20) -> bytes:
    """{'junk': [encode(s, 'latin1')] * copies, 'data': [], 'labels': []}, s a memoised str."""
    out = bytearray(b"\x80\x02}q\x00(X\x04\x00\x00\x00junk]q\x01(")
    out += b"c_codecs\nencode\nq\x02"
    out += b"X" + struct.pack("<I", size) + b"a" * size + b"q\x03"
    out += b"X\x06\x00\x00\x00latin1q\x04"
    out += b"h\x02h\x03h\x04\x86R" * copies
    out += b"eX\x04\x00\x00\x00data]X\x06\x00\x00\x00labels]u."
    return bytes(out)


def crafted_flood(n: int = 1 << 20) -> bytes:
    return b"\x80\x02}(X\x04\x00\x00\x00junk(" + b"]" * n + b"lX\x04\x00\x00\x00data]u."


def _rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(case: str, path: str) -> None:
    """One case, in this process; prints its figures as JSON."""
    import json

    import numpy as np  # noqa: F401  (imported before the baseline)
    import torch  # noqa: F401

    base = _rss_mib()
    t = time.perf_counter()
    err = None
    try:
        if case == "legit":
            ds = wb.load_dataset("cifar10", root=path, download=False, verify_checksums=False)
            size = sum(x.element_size() * x.nelement()
                       for x in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
        else:
            wb_data._read_cifar_batch(Path(path))
            size = Path(path).stat().st_size
    except (ValueError, MemoryError) as exc:
        err, size = f"{type(exc).__name__}: {str(exc)[:160]}", Path(path).stat().st_size
    print(json.dumps({"peak_mib": _rss_mib() - base, "size_mib": size / 2**20,
                      "seconds": time.perf_counter() - t, "error": err}))


def run_case(case: str, path: Path) -> dict:
    import json
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(wb.__file__).parent.parent)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    out = subprocess.run([sys.executable, __file__, "--child", case, str(path)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    from helpers import write_cifar

    p = argparse.ArgumentParser(prog="benchmarks/cifar_memory.py")
    p.add_argument("--images", type=int, default=2000, help="images per batch (legit case)")
    p.add_argument("--copies", type=int, default=200, help="1 MiB copies asked for (crafted)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(*a.child)
    print(f"workbench from {Path(wb.__file__).parent}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar(root, n_per_batch=a.images)
        files = sum(f.stat().st_size for f in (root / wb_data.CIFAR10_DIR).iterdir())
        r = run_case("legit", root)
        print(f"legit, {6 * a.images} images: files {files / 2**20:.1f} MiB, dataset "
              f"{r['size_mib']:.1f} MiB, peak growth {r['peak_mib']:.1f} MiB = "
              f"{r['peak_mib'] / r['size_mib']:.2f}x the dataset ({r['seconds']:.2f} s)"
              + (f"; {r['error']}" if r["error"] else ""), flush=True)
        for name, blob in (("crafted copies", crafted_copies(a.copies)),
                           ("crafted flood", crafted_flood())):
            path = root / "batch"
            path.write_bytes(blob)
            r = run_case("crafted", path)
            print(f"{name}: file {r['size_mib']:.2f} MiB, peak growth {r['peak_mib']:.1f} MiB = "
                  f"{r['peak_mib'] / r['size_mib']:.1f}x the file ({r['seconds']:.2f} s): "
                  f"{r['error']}", flush=True)


if __name__ == "__main__":
    main()
