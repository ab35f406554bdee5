"""atomic.py: what may be replaced, the renameat2 swap and its fallback, crash recovery, stale temporaries, modes."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from rag_pipeline import atomic
from rag_pipeline.atomic import Artifact, atomic_dir, check_separate, check_target, clean_stale, replace_dir
from rag_pipeline.errors import ConfigError

ART = Artifact("a test artifact", "manifest.json", "test-kind", allowed=frozenset({"manifest.json", "data.txt"}), scratch=frozenset({"partial"}))


def _artifact(path: Path, data: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"kind": "test-kind"}))
    (path / "data.txt").write_text(data)
    return path


def _dead_pid() -> int:
    """The pid of a process that has exited (reaped), so nothing runs under it."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return atomic.exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


# ------------------------------------------------------------------------------- what may be replaced


def test_absent_empty_own_and_scratch_targets_are_accepted(tmp_path: Path) -> None:
    check_target(tmp_path / "absent", ART)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", ART)
    check_target(_artifact(tmp_path / "own", "x"), ART)
    (tmp_path / "unfinished" / "partial").mkdir(parents=True)
    check_target(tmp_path / "unfinished", ART)


@pytest.mark.parametrize("case", ["file", "foreign dir", "other kind", "corrupt marker", "own plus user file", "symlink"])
def test_anything_else_is_refused_with_the_path_and_a_fix(tmp_path: Path, case: str) -> None:
    target = tmp_path / "t"
    if case == "file":
        target.write_text("mine")
    elif case == "foreign dir":
        target.mkdir()
        (target / "thesis.tex").write_text("\\begin{document}")
    elif case == "other kind":
        _artifact(target, "x")
        (target / "manifest.json").write_text(json.dumps({"kind": "raft-dataset"}))
    elif case == "corrupt marker":
        _artifact(target, "x")
        (target / "manifest.json").write_text("{not json")
    elif case == "own plus user file":
        _artifact(target, "x")
        (target / "notes.md").write_text("mine")
    else:
        _artifact(tmp_path / "real", "x")
        target.symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError) as e:
        check_target(target, ART)
    msg = str(e.value)
    assert str(target) in msg and ("choose another path" in msg or "pass the real path" in msg) and "\n" not in msg


def test_atomic_dir_refuses_before_the_block_and_deletes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    (target / "thesis.tex").write_text("chapter 1")
    ran = False
    with pytest.raises(ConfigError, match="not a test artifact"):
        with atomic_dir(target, ART):
            ran = True
    assert not ran and (target / "thesis.tex").read_text() == "chapter 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]  # no temporary left beside it


def test_replace_dir_rechecks_at_swap_time(tmp_path: Path) -> None:
    """Something foreign that appears while the artifact is being built is not replaced either."""
    target = tmp_path / "t"
    with pytest.raises(ConfigError):
        with atomic_dir(target, ART) as tmp:
            (tmp / "manifest.json").write_text(json.dumps({"kind": "test-kind"}))
            target.mkdir()
            (target / "photo.jpg").write_bytes(b"\xff\xd8")
    assert (target / "photo.jpg").read_bytes() == b"\xff\xd8"


def test_inputs_and_outputs_must_not_overlap(tmp_path: Path) -> None:
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    check_separate([tmp_path / "proj"], tmp_path / "out")
    check_separate([tmp_path / "proj" / "a.txt"], tmp_path / "proj" / "idx")  # a file's folder may hold the output
    for inputs, out, words in (
        ([tmp_path / "proj"], tmp_path / "proj", "is also an input"),
        ([tmp_path / "proj"], tmp_path / "proj" / "indexes" / "p", "inside the input"),
        ([tmp_path / "proj" / "sub"], tmp_path / "proj", "is inside --output"),
        ([Path(os.path.relpath(tmp_path / "proj", Path.cwd()))], tmp_path / "proj" / "x", "inside the input"),  # relative vs absolute
    ):
        with pytest.raises(ConfigError, match=words):
            check_separate(inputs, out)


# ------------------------------------------------------------------------------- swap and fallback


def test_renameat2_exchange_swaps_two_directories(tmp_path: Path) -> None:
    if not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    a, b = _artifact(tmp_path / "a", "new"), _artifact(tmp_path / "b", "old")
    assert atomic.exchange(a, b)
    assert (a / "data.txt").read_text() == "old" and (b / "data.txt").read_text() == "new"


def test_replace_uses_the_swap_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    target = _artifact(tmp_path / "t", "old")

    def no_rename(*a: object) -> None:
        raise AssertionError("the swap path must not rename the old artifact aside")

    monkeypatch.setattr(atomic, "_replace_by_renames", no_rename)
    with atomic_dir(target, ART) as tmp:
        _artifact(tmp, "new")
    assert (target / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_unsupported_exchange_falls_back_to_two_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def einval(*args: object) -> int:  # what renameat2 answers on a filesystem without RENAME_EXCHANGE
        calls.append(args)
        ctypes.set_errno(errno.EINVAL)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", lambda: einval)
    target = _artifact(tmp_path / "t", "old")
    with atomic_dir(target, ART) as tmp:
        _artifact(tmp, "new")
    assert calls and (target / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_other_exchange_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def eacces(*args: object) -> int:
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(atomic, "_renameat2", lambda: eacces)
    with pytest.raises(PermissionError):
        atomic.exchange(tmp_path / "a", tmp_path / "b")


CRASH = """
import os, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from rag_pipeline import atomic
src, target, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if mode == "fallback":
    atomic.exchange = lambda a, b: False
    real = os.rename
    def rename(a, b):
        if Path(a) == src:  # the second rename: killed between the two
            os._exit(9)
        real(a, b)
    atomic.os.rename = rename
else:
    atomic.shutil.rmtree = lambda *a, **k: os._exit(9)  # killed right after the swap
atomic.replace_dir(src, target, atomic.Artifact("a test artifact", "manifest.json", "test-kind"))
"""


def _crash(tmp_path: Path, mode: str) -> tuple[Path, int]:
    src, target = _artifact(tmp_path / ".t.tmp-1-abcd", "new"), _artifact(tmp_path / "t", "old")
    proc = subprocess.Popen([sys.executable, "-c", CRASH.format(repo=str(REPO)), str(src), str(target), mode], stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    assert proc.returncode == 9, err
    return target, proc.pid


def test_crash_after_the_swap_leaves_the_complete_new_artifact(tmp_path: Path) -> None:
    if not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported here")
    target, _ = _crash(tmp_path, "exchange")
    assert (target / "data.txt").read_text() == "new"
    assert (tmp_path / ".t.tmp-1-abcd" / "data.txt").read_text() == "old"  # the old one, still to be deleted


def test_crash_between_fallback_renames_is_repaired_by_the_next_run(tmp_path: Path) -> None:
    target, pid = _crash(tmp_path, "fallback")
    assert not target.exists() and (tmp_path / f".t.old-{pid}" / "data.txt").read_text() == "old"
    clean_stale(target)  # what the next run of the command does first
    assert (target / "data.txt").read_text() == "old"
    assert not (tmp_path / f".t.old-{pid}").exists()


# ------------------------------------------------------------------------------- stale temporaries, modes


def test_temporaries_of_dead_runs_are_removed_live_ones_kept(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    target = _artifact(tmp_path / "t", "old")
    stale = [tmp_path / f".t.tmp-{dead}-0badc0de", tmp_path / f".t.old-{dead}"]
    for p in stale:
        _artifact(p, "stale")
    (tmp_path / f".t.tmp-{dead}").write_text("half a json file")  # write_json's / ask's temporary files
    keep = [tmp_path / f".t.tmp-{live}-00000000", tmp_path / ".other.tmp-1-abcd", tmp_path / ".t.tmp-old-style"]
    for p in keep:
        p.mkdir()
    with atomic_dir(target, ART) as tmp:
        _artifact(tmp, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t", *(p.name for p in keep)])
    assert (target / "data.txt").read_text() == "new"  # the stale .old was removed, not restored over it


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifacts_get_the_users_normal_mode(tmp_path: Path, umask: int) -> None:
    before = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "t", ART) as tmp:
            _artifact(tmp, "x")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "t" / "data.txt").stat().st_mode) == 0o666 & ~umask


def test_atomic_file_replaces_the_file_or_leaves_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.jsonl"
    atomic.write_jsonl(target, [{"b": 1, "a": "é"}, [2]])
    assert target.read_bytes() == '{"b": 1, "a": "é"}\n[2]\n'.encode()
    atomic.write_jsonl(target, [{"b": 1, "a": 2}], sort_keys=True)
    assert target.read_text() == '{"a": 2, "b": 1}\n'
    with pytest.raises(KeyboardInterrupt), atomic.atomic_file(target) as f:
        f.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == '{"a": 2, "b": 1}\n' and sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"]


def test_atomic_file_refuses_a_directory_target(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="is a directory; this output is a file"):
        with atomic.atomic_file(tmp_path / "d"):
            pass
    assert list((tmp_path / "d").iterdir()) == []


# ------------------------------------------------------------------------------- an output folder that cannot be written


def _deny_temporaries(monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """Make creating a ``.NAME.tmp-*`` entry fail with ``err``, as in a read-only folder (root ignores
    directory permissions, so chmod alone cannot make the case real for the suite running as root)."""
    real_mkdir, real_open = os.mkdir, Path.open

    def mkdir(path, *a, **k):
        if ".tmp-" in os.fspath(path):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_mkdir(path, *a, **k)

    def open_(path, *a, **k):
        if ".tmp-" in path.name:
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(Path, "open", open_)


@pytest.mark.parametrize("err,words", [(errno.EACCES, "is not writable (Permission denied)"), (errno.EROFS, "is on a read-only filesystem")])
def test_an_unwritable_folder_is_a_config_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, words: str) -> None:
    _deny_temporaries(monkeypatch, err)
    with pytest.raises(ConfigError, match=rf"--index .*t cannot be written: {re.escape(f'{tmp_path} {words}')}: choose a path in a folder you can write to"):
        with atomic_dir(tmp_path / "t", Artifact("an index", "manifest.json", "k", flag="--index")):
            pytest.fail("the block ran without a temporary folder")
    with pytest.raises(ConfigError, match=rf"--output .*out.jsonl cannot be written: {re.escape(f'{tmp_path} {words}')}"):
        with atomic.atomic_file(tmp_path / "out.jsonl"):
            pytest.fail("the block ran without a temporary file")
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_output_folder_should_be_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "notes").write_text("mine")
    for target in (tmp_path / "notes" / "out", tmp_path / "notes" / "deeper" / "out"):
        with pytest.raises(ConfigError, match=rf"cannot be written: {tmp_path / 'notes'} is a file, so it holds no folders"):
            with atomic_dir(target, ART):
                pass
        with pytest.raises(ConfigError, match=r"is a file, so it holds no folders"):
            atomic.write_json(target, {})
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_full_disk_is_not_reported_as_an_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _deny_temporaries(monkeypatch, errno.ENOSPC)  # the CLI has its own message for a full disk
    with pytest.raises(OSError) as e:
        with atomic_dir(tmp_path / "t", ART):
            pass
    assert e.value.errno == errno.ENOSPC and not isinstance(e.value, ConfigError)


def test_a_users_file_where_the_lock_would_go_is_never_truncated_or_removed(tmp_path: Path) -> None:
    """``.NAME.lock`` beside an output that holds something other than a pid is somebody's own file:
    the lock refuses, and the file survives byte for byte."""
    from rag_pipeline.atomic import lock_path, output_lock
    from rag_pipeline.errors import ConfigError

    target = tmp_path / "out"
    mine = lock_path(target)
    mine.write_text("my notes about the lock\n")
    with pytest.raises(ConfigError, match="is not a lock written by rag-pipeline"):
        with output_lock(target):
            pass
    assert mine.read_text() == "my notes about the lock\n"
    mine.write_text("12345\n")  # a lock a killed run left: taken over, then removed
    with output_lock(target):
        assert mine.read_text() == f"{os.getpid()}\n"
    assert not mine.exists()
