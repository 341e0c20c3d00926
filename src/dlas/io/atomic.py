"""Atomic file and folder writes: a reader never sees a half-written output.

Everything `dlas` writes goes to a temporary name in the destination folder first and is then
renamed over the final name with :func:`os.replace`, which is atomic on POSIX and Windows for
paths on one file system. A crash leaves at most a hidden ``.tmp-*`` file, never a truncated
output under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlas.errors import OutputError

__all__ = ["atomic_dir", "atomic_path", "check_output", "write_json", "write_text"]


def _tmp_sibling(path: Path) -> Path:
    # Keep the full suffix (".nii.gz"): writers such as SimpleITK choose the format from it.
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".tmp-{stem}-{uuid.uuid4().hex[:12]}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success rename it to ``path``.

    Parameters
    ----------
    path
        The final folder. It must not exist unless ``replace`` is true.
    replace
        Replace an existing folder (the old one is removed only after the new one is complete).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        tmp.mkdir()  # inside the try: an interrupt right after it still cleans up
        yield tmp
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} appeared while it was being written")
            old = _tmp_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def check_output(
    path: str | os.PathLike[str],
    *,
    folder: bool,
    option: str,
    overwrite: bool = True,
    existing: tuple[str, ...] = (),
) -> None:
    """Refuse an output before any work is done, rather than after it.

    Checks that ``path`` is (or can become) a folder (``folder``) or a file, that its folder can
    be written (a probe file is created and removed: this catches read-only file systems and
    missing permissions alike), and, unless ``overwrite``, that none of ``existing`` is there
    (names relative to the folder; a file output counts ``path`` itself too).

    Raises
    ------
    OutputError
        With ``option`` (e.g. ``--out``) as the place to fix.
    """
    out = Path(path)
    if folder and out.exists() and not out.is_dir():
        raise OutputError(
            "output folder is a file",
            where=f"{option} {out}",
            expected="a folder (new or existing)",
            found="a file",
            fix=f"choose another {option}",
        )
    if not folder and out.is_dir():
        raise OutputError(
            "output file is a folder",
            where=f"{option} {out}",
            expected="a file path",
            found="a folder",
            fix=f"choose another {option}, e.g. a file inside that folder",
        )
    directory = out if folder else out.parent
    # Probe the nearest folder that exists (nothing is created for the output itself, so a
    # refusal later leaves nothing behind).
    existing_dir = directory
    while not existing_dir.exists() and existing_dir != existing_dir.parent:
        existing_dir = existing_dir.parent
    try:
        if not existing_dir.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(existing_dir))
        probe = existing_dir / f".tmp-probe-{uuid.uuid4().hex[:12]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            "cannot write the output",
            where=f"{option} {out}",
            expected="a folder this user can write to, with free space",
            found=f"{exc.strerror or type(exc).__name__} in {existing_dir}",
            fix=f"choose another {option}, or fix the folder's permissions or space",
        ) from None
    if overwrite:
        return
    present = [n for n in existing if (directory / n).exists()]
    if not folder and out.exists():
        present.insert(0, out.name)
    if present:
        raise OutputError(
            "output already exists",
            where=f"{option} {out}",
            expected="a new output",
            found=", ".join(present),
            fix="pass --overwrite to replace it, or choose another output",
        )
