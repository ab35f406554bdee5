"""Atomic writes: build an artifact in a temporary directory beside the target, then swap it in.

An interrupted or failed build (exception, Ctrl-C, full disk) leaves the previous artifact
untouched and nothing half-written at the target path. A command replaces only an artifact of
its own kind (an :class:`Artifact`, recognised by its marker file); a target holding anything
else (the user's folder, a file, another command's output) is refused, never deleted.

Temporary names carry the writer's pid (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.old-PID``), so the
next run of the command cleans up what a killed run left behind: see :func:`clean_stale`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rag_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
RENAME_EXCHANGE = 2  # <linux/fs.h>: renameat2 swaps the two paths atomically
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}  # kernel or filesystem lacks it


@dataclass(frozen=True)
class Artifact:
    """What one command's output directory looks like, so that it may replace it (and nothing else).

    Attributes:
        what: the artifact in words ("an index"), for messages.
        marker: the file that marks the artifact (``manifest.json``).
        kind: the marker's JSON ``"kind"``; None when the marker has none.
        keys: markers without a ``"kind"`` (older or foreign formats) are recognised by holding all
            these keys; none: the marker's presence is enough.
        allowed: the only top-level entries the artifact may hold (anything else there is the
            user's and would be deleted with it); None: any.
        scratch: entries an unfinished run leaves before the marker exists (train's checkpoints).
        flag: the option naming the target, for messages.
    """

    what: str
    marker: str
    kind: str | None = None
    keys: tuple[str, ...] = ()
    allowed: frozenset[str] | None = None
    scratch: frozenset[str] = frozenset()
    flag: str = "--output"

    def marked(self, path: Path) -> bool:
        """Whether ``path`` holds this artifact's marker (with the right kind or keys)."""
        marker = path / self.marker
        if not marker.is_file():
            return False
        if self.kind is None and not self.keys:
            return True
        meta = _read_json_object(marker)
        if meta is None:
            return False
        if "kind" in meta:
            return meta["kind"] == self.kind
        return bool(self.keys) and all(k in meta for k in self.keys)


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


# ------------------------------------------------------------------------------ checks


def check_target(target: str | Path, artifact: Artifact) -> None:
    """Fail unless ``target`` is absent, an empty directory, or ``artifact`` (so it may be replaced).

    Raises:
        ConfigError: ``target`` is a file, a symbolic link, a directory holding something else, or
            the artifact plus files it does not write; the message names the path and the fix.
    """
    target = Path(target)
    where = f"{artifact.flag} {target}"
    if target.is_symlink():
        raise ConfigError(f"{where} is a symbolic link: pass the real path ({target.resolve()}) or another path")
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"{where} is an existing file, not {artifact.what}: choose another path, or delete the file yourself")
    entries = sorted(p.name for p in target.iterdir())
    if not entries or (set(entries) <= artifact.scratch):
        return
    if not artifact.marked(target):
        raise ConfigError(f"{where} already holds files that are not {artifact.what} ({_listing(entries)}): it is never "
                          "replaced; choose another path (or an empty folder), or delete it yourself")
    extra = [e for e in entries if artifact.allowed is not None and e not in artifact.allowed]
    if extra:
        raise ConfigError(f"{where} is {artifact.what} but also holds {_listing(extra)}, which replacing it would delete: "
                          "move those out, or choose another path")


def _listing(names: list[str], shown: int = 3) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_file_target(target: str | Path, flag: str = "--output") -> None:
    """Fail when an output meant to be a file names a directory.

    Raises:
        ConfigError: ``target`` is a directory.
    """
    if Path(target).is_dir():
        raise ConfigError(f"{flag} {target} is a directory; this output is a file: pass a file path, e.g. {Path(target) / 'answers.jsonl'}")


def check_separate(inputs: Iterable[str | Path], output: str | Path, flag: str = "--output") -> None:
    """Fail when the output is an input, lies inside one, or holds one.

    An output inside an input folder is read back as input on the next run; an input inside the
    output is deleted when the output is replaced.

    Raises:
        ConfigError: naming both paths and the fix.
    """
    out = Path(os.path.realpath(output))  # realpath, unlike Path.resolve on Python 3.11, does not raise on a symlink loop
    for raw in inputs:
        src = Path(os.path.realpath(raw))
        if out == src:
            raise ConfigError(f"{flag} {output} is also an input: write the output elsewhere, e.g. {Path(output).parent / (out.name + '-out')}")
        if out.is_relative_to(src):
            raise ConfigError(f"{flag} {output} is inside the input {raw}: the next run would read its own output; "
                              "write it outside the input folder")
        if src.is_relative_to(out):
            raise ConfigError(f"input {raw} is inside {flag} {output}, which this command replaces: move the input out, "
                              "or choose another output path")


# ----------------------------------------------------------------------- stale temporaries


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _left_by_dead(target: Path) -> list[tuple[Path, str]]:
    """The ``.NAME.tmp-PID...`` and ``.NAME.old-PID...`` entries beside ``target`` whose writer no longer runs, with
    their kind (``tmp`` or ``old``), in name order."""
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)(-[0-9a-f]+)?")
    return [(p, m.group(1)) for p in sorted(target.parent.iterdir())
            if (m := pattern.fullmatch(p.name)) and not _pid_alive(int(m.group(2)))]


def aside_of_dead(target: str | Path) -> list[Path]:
    """The ``.NAME.old-PID...`` copies of ``target`` moved aside by writers that no longer run (newest last)."""
    found = [p for p, kind in _left_by_dead(Path(os.path.abspath(target))) if kind == "old"]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def aside_name(target: Path) -> Path:
    """A new ``.NAME.old-PID-XXXXXXXX`` path beside ``target``, to move it aside under (:func:`clean_stale` knows it)."""
    return target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")


def clean_stale(target: str | Path) -> None:
    """Clean up what killed writers of ``target`` left beside it (their pid no longer runs).

    Removes ``.NAME.tmp-PID...`` files and directories. A ``.NAME.old-PID`` (an old artifact moved
    aside by the rename fallback of :func:`replace_dir`) is renamed back when ``target`` is
    missing, so a crash between the two renames loses nothing, and removed otherwise.
    """
    target = Path(os.path.abspath(target))
    for p, kind in _left_by_dead(target):
        if kind == "old" and not target.exists() and not target.is_symlink():
            log.warning("restoring %s from %s (a run was killed while replacing it)", target, p.name)
            os.rename(p, target)
        else:
            log.info("removing %s, left by a killed run", p)
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def prepare_target(target: str | Path, artifact: Artifact) -> None:
    """Call early in a command, before heavy work: clean up after killed runs, then :func:`check_target`."""
    clean_stale(target)
    check_target(target, artifact)


# ------------------------------------------------------------------------------ writing


# Why a folder cannot hold an output: no permission, a read-only filesystem, a file where a folder must be.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR}


def _unwritable(target: Path, flag: str, e: OSError) -> ConfigError:
    """The one-line error for an output whose folder cannot be made or written (``e.errno`` in :data:`_UNWRITABLE`)."""
    blocker = next((p for p in target.parents if p.exists() or p.is_symlink()), None)  # the nearest ancestor there is
    if blocker is not None and not blocker.is_dir():
        return ConfigError(f"{flag} {target} cannot be written: {blocker} is a file, so it holds no folders: choose another path")
    why = "is on a read-only filesystem" if e.errno == errno.EROFS else f"is not writable ({e.strerror})"
    return ConfigError(f"{flag} {target} cannot be written: {blocker or target.parent} {why}: choose a path in a folder you can "
                       "write to, or fix that folder's permissions")


def _make_parent(target: Path, flag: str = "--output") -> None:
    """Create the folder ``target`` goes in; one that cannot be made is a ConfigError (:func:`_unwritable`)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        raise _unwritable(target, flag, e) from None


def _make_tmp_dir(target: Path, flag: str = "--output") -> Path:
    """A new directory ``.NAME.tmp-PID-XXXXXXXX`` beside ``target``, with the user's normal mode.

    ``os.mkdir(path, 0o777)`` lets the umask apply (0o755 with the usual 022), where
    ``tempfile.mkdtemp`` would leave 0o700 on the finished artifact.

    Raises:
        ConfigError: the folder beside ``target`` is not writable (permissions, a read-only filesystem).
    """
    while True:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in _UNWRITABLE:
                raise
            raise _unwritable(target, flag, e) from None


@contextlib.contextmanager
def atomic_dir(target: str | Path, artifact: Artifact) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` when the block succeeds.

    The temporary directory lives beside ``target`` (same filesystem, so the swap is atomic).
    On any exception, KeyboardInterrupt included, it is removed and ``target`` is unchanged.

    Raises:
        ConfigError: ``target`` holds something other than ``artifact`` (checked before the block
            runs and again before the swap), or its folder cannot be made or written; nothing is
            written then.
    """
    prepare_target(target, artifact)
    target = Path(os.path.abspath(target))  # "." and "sub/.." have a name to put beside
    _make_parent(target, artifact.flag)
    tmp = _make_tmp_dir(target, artifact.flag)
    try:
        yield tmp
        _fsync_tree(tmp)
        replace_dir(tmp, target, artifact)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staging_dir(target: str | Path) -> Iterator[Path]:
    """Yield a scratch directory beside ``target`` for parts built before the artifact is written
    (an index that :func:`atomic_dir` then moves in); removed on exit, whatever remains in it.

    It is named like :func:`atomic_dir`'s temporary directories, so a killed run's is cleaned up
    by :func:`clean_stale` on the next run.
    """
    target = Path(os.path.abspath(target))
    _make_parent(target)
    tmp = _make_tmp_dir(target)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, target: Path, artifact: Artifact) -> None:
    """Move directory ``src`` to ``target``, replacing ``artifact`` there (and nothing else).

    On Linux the two are swapped by ``renameat2(RENAME_EXCHANGE)``, so ``target`` is at every
    instant the complete old or the complete new artifact; the old one is deleted afterwards.
    Where that is unsupported, the old one is renamed aside to ``.NAME.old-PID`` first: a crash
    between the two renames is repaired by :func:`clean_stale` on the next run.

    Raises:
        ConfigError: ``target`` holds something other than ``artifact``.
    """
    check_target(target, artifact)
    if not target.exists():
        os.rename(src, target)
    elif exchange(src, target):
        shutil.rmtree(src, ignore_errors=True)  # ``src`` now holds the old artifact
    else:
        _replace_by_renames(src, target)


def _replace_by_renames(src: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    os.rename(target, old)
    try:
        os.rename(src, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2`` (glibc >= 2.28), or None off Linux or with an older libc."""
    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the kernel, libc or filesystem cannot.

    Raises:
        OSError: any other failure of ``renameat2``.
    """
    fn = _renameat2()
    if fn is None:
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_file(target: str | Path, flag: str = "--output") -> Iterator[IO[str]]:
    """Yield a text file that replaces the file ``target`` when the block succeeds.

    The file is written beside ``target`` (``.NAME.tmp-PID``), flushed to disk and renamed over
    it; on any exception, KeyboardInterrupt included, it is removed and ``target`` is unchanged.
    Temporary files of killed runs are removed first.

    Raises:
        ConfigError: ``target`` is a directory, or its folder cannot be made or written (checked
            before anything is written).
    """
    target = Path(target)
    check_file_target(target, flag)
    _make_parent(target, flag)
    clean_stale(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        f = tmp.open("w", encoding="utf-8")
    except OSError as e:
        if e.errno not in _UNWRITABLE:
            raise
        raise _unwritable(target, flag, e) from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_line(obj: Any, sort_keys: bool = False) -> str:
    """One JSON Lines record: compact, UTF-8 characters kept, newline-terminated."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=sort_keys) + "\n"


def write_jsonl(path: str | Path, rows: Iterable[Any], sort_keys: bool = False) -> None:
    """Write ``rows`` as JSON Lines (:func:`json_line`) through :func:`atomic_file`."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json_line(row, sort_keys))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as stable, human-readable JSON (sorted keys, UTF-8) through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk before the rename makes it visible."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ------------------------------------------------------------------------------ locking


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside it (hidden, and never inside the artifact)."""
    target = Path(os.path.abspath(target))
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def output_lock(target: str | Path, flag: str = "--output") -> Iterator[Path]:
    """Hold an exclusive lock on writing ``target`` for the whole block: a second run writing the
    same path fails at once instead of building for minutes and then silently replacing (or being
    replaced by) the first one's result.

    The lock is ``fcntl.flock`` on :func:`lock_path`, which holds the owner's pid for the message.
    The kernel drops it when the process dies, so a killed run never leaves a stale lock; the file
    is removed on release (a waiter that opened the removed file retries on the new one).

    Raises:
        ConfigError: another process (or another open of it in this one) holds the lock; the
            message names the lock file and its owner's pid. Or the folder of ``target`` cannot be
            made or written (:func:`_unwritable`).
    """
    import fcntl

    path = lock_path(target)
    _make_parent(Path(os.path.abspath(target)), flag)  # the lock's folder is the target's
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno not in _UNWRITABLE:
                raise
            raise _unwritable(Path(os.path.abspath(target)), flag, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{flag} {target} is being written by another run (pid {owner}, lock {path}): wait for it to "
                              f"finish, or write to another {flag}") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:  # released (and removed) between our open and our lock
            same = False
        if same:
            break
        os.close(fd)
    held = os.pread(fd, 64, 0).decode("ascii", "replace")
    if held and not re.fullmatch(r"\d+\n?", held):  # not a lock of ours: somebody's own file, never truncated or removed
        os.close(fd)
        raise ConfigError(f"{path} exists and is not a lock written by rag-pipeline: move it away, or write to another {flag}")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still held: the next run locks a fresh file
        os.close(fd)
