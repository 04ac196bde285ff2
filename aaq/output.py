"""The output directory: each run's files are published together, by one rename, or not at all.

Layout::

    OUTPUT_DIR/report.json          -> .runs/current/report.json
    OUTPUT_DIR/NAME.quantized.onnx  -> .runs/current/NAME.quantized.onnx
    OUTPUT_DIR/aaq.log              -> .runs/current/aaq.log
    OUTPUT_DIR/.runs/current        -> 20261201T104418-4242-9f3a   (the one link a run switches)
    OUTPUT_DIR/.runs/20261201T104418-4242-9f3a/   a complete run: its model, report.json, aaq.log

A run writes into its own folder ``.runs/ID.partial`` (so two runs into one directory
never mix their files), then renames it ``.runs/ID`` and switches ``.runs/current`` to
it with one atomic ``rename`` of a symbolic link. The fixed names in ``OUTPUT_DIR`` are
links through ``.runs/current``, so whoever opens ``OUTPUT_DIR/report.json`` and
``OUTPUT_DIR/NAME.quantized.onnx`` gets the files of one run, never a new model beside
an old report; a reader that must be safe against a run finishing *between* its two
opens resolves ``.runs/current`` once and reads both files from there.

A run that fails or is interrupted publishes nothing: the previous pair stays current,
and the failed run's folder keeps only its log, as ``.runs/ID.failed/aaq.log``. After a
switch, complete runs other than the current and the previous one are deleted, and
failed ones beyond the newest ``KEEP_FAILED``; a ``.partial`` folder is deleted only when
the run that owned it is gone (its lock is free).

Files are created with mode 0666 and folders 0777, less the umask (0644 / 0755 under
the usual one). Nothing is ever written outside ``OUTPUT_DIR``, and a file that is one of
the run's inputs (the model, the spec, the data) is never replaced nor deleted.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from aaq.errors import BadInputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: in-progress runs are never pruned
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

RUNS = ".runs"
CURRENT = "current"
PARTIAL, FAILED = ".partial", ".failed"
KEEP_FAILED = 3
"""How many failed runs' folders (their logs) are kept."""
STALE_SECONDS = 60.0
"""A ``.partial`` folder younger than this is never pruned, even when its lock looks free."""
_LOCK = ".lock"
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class RunFolder:
    """One run's files, written into a private folder and published by ``commit`` as one.

    ``protect`` lists the run's input files: a run that would replace one of them is
    refused when the folder is created (before any work), and again at commit.
    """

    def __init__(self, out_dir: Path, path: Path, lock: int | None, protect: tuple[Path, ...]) -> None:
        self.out_dir = out_dir
        self.path = path
        self._lock = lock
        self._protect = protect
        self._names: list[str] = []
        self.committed = False

    @classmethod
    def create(cls, out_dir: str | Path, *, names: Iterable[str] = (),
               protect: Iterable[str | Path] = ()) -> "RunFolder":
        """A new private folder in ``out_dir`` (made if needed); ``names`` are the files it will publish."""
        out = Path(out_dir)
        protected = tuple(Path(p) for p in protect if p)
        for name in names:
            check_file_name(name)
            _refuse_replacing_inputs(out, name, protected)
        runs = out / RUNS
        try:
            runs.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise BadInputError(f"output directory {str(out)!r}: a file is in the way "
                                f"({_first_non_directory(runs)} is not a directory)") from None
        except NotADirectoryError:
            raise BadInputError(f"output directory {str(out)!r}: {_first_non_directory(runs)} is a file, "
                                f"not a directory") from None
        except OSError as exc:
            raise BadInputError(f"output directory {str(out)!r} cannot be made: {exc.strerror or exc}") from None
        for _ in range(100):
            run_id = f"{_dt.datetime.now().strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
            path = runs / (run_id + PARTIAL)
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise BadInputError(f"output directory {str(out)!r} is not writable: "
                                    f"{exc.strerror or exc}") from None
        else:  # pragma: no cover
            raise BadInputError(f"output directory {str(out)!r}: cannot make a run folder")
        return cls(out, path, _take_lock(path), protected)

    @property
    def run_id(self) -> str:
        return self.path.name.removesuffix(PARTIAL).removesuffix(FAILED)

    def file(self, name: str) -> Path:
        """Where file ``name`` of this run lives until (and after) the commit; it will be published."""
        check_file_name(name)
        if name not in self._names:
            self._names.append(name)
        return self.path / name

    def write(self, name: str, data: bytes) -> Path:
        """Write ``data`` as file ``name`` of this run (flushed to disk); it is published at commit."""
        path = self.file(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return path

    def commit(self) -> dict[str, Path]:
        """Publish every file of the run at once; returns ``{name: OUTPUT_DIR/name}``.

        SIGINT, SIGTERM and SIGHUP wait until the switch is done: an interruption comes
        before it (nothing published) or after it (everything published).
        """
        if self.committed:
            raise RuntimeError("this run folder was committed already")
        names = [n for n in self._names if (self.path / n).exists()]
        for name in names:
            _refuse_replacing_inputs(self.out_dir, name, self._protect)
        with signals_deferred():
            runs = self.out_dir / RUNS
            done = runs / self.run_id
            _fsync_dir(self.path)
            os.rename(self.path, done)
            self.path = done
            for name in names:
                _ensure_link(self.out_dir / name, f"{RUNS}/{CURRENT}/{name}")
            previous = _read_link(runs / CURRENT)
            _replace_link(runs / CURRENT, done.name)
            self.committed = True  # from here on the run is published, whatever happens next
            self._release()
            _fsync_dir(runs)
            _fsync_dir(self.out_dir)
        # Tidying may be interrupted: what it leaves is neither current nor previous, and goes next time.
        _remove_dangling_links(self.out_dir)
        _prune(runs, keep={done.name, previous}, protect=self._protect)
        logger.debug("published run %s: %s", done.name, ", ".join(names))
        return {name: self.out_dir / name for name in names}

    def abandon(self, keep: Iterable[str] = ("aaq.log",)) -> Path:
        """Publish nothing: delete this run's files but ``keep`` and mark its folder failed; returns it."""
        keep = set(keep)
        with signals_deferred():
            if self.committed or not self.path.exists():
                return self.path
            for entry in self.path.iterdir():
                if entry.name not in keep and entry.name != _LOCK:
                    _remove(entry)
            failed = self.path.with_name(self.run_id + FAILED)
            try:
                os.rename(self.path, failed)
                self.path = failed
            except OSError:  # pragma: no cover - the folder stays .partial and is pruned later
                pass
            self._release()
        return self.path

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
            with contextlib.suppress(OSError):
                (self.path / _LOCK).unlink()


def write_files(out_dir: str | Path, files: Mapping[str, bytes], *,
                protect: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Write ``files`` (``{file name: bytes}``) into ``out_dir`` as one transaction; their published paths."""
    run = RunFolder.create(out_dir, names=files, protect=protect)
    try:
        for name, data in files.items():
            run.write(name, data)
        return run.commit()
    except BaseException:
        run.abandon(keep=())
        raise


def check_file_name(name: str) -> None:
    """A run's file must be a plain file name: it is published as ``OUTPUT_DIR/name``, nowhere else."""
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\x00" in name or os.sep in name
            or (os.altsep and os.altsep in name) or len(name.encode("utf-8", "surrogatepass")) > 255):
        raise BadInputError(f"{name!r} is not a plain file name: an output file is written into the output "
                            f"directory only")


def current_folder(out_dir: str | Path) -> Path | None:
    """The folder of the run currently published in ``out_dir`` (resolve once, read both files)."""
    link = Path(out_dir) / RUNS / CURRENT
    return link.resolve() if link.is_symlink() else None


# ------------------------------------------------------------------ internals

def _refuse_replacing_inputs(out: Path, name: str, protect: tuple[Path, ...]) -> None:
    entry = out / name
    runs = (out / RUNS).resolve()
    for given in protect:
        if _same(entry, given) or runs in given.resolve().parents:
            raise BadInputError(f"the output {str(entry)!r} would replace the input {str(given)!r}: "
                                f"choose another output directory (or model.name)")


def _same(entry: Path, given: Path) -> bool:
    if os.path.abspath(entry) == os.path.abspath(given) or entry.resolve() == given.resolve():
        return True
    try:
        return os.path.samefile(entry, given)
    except OSError:
        return False


def _first_non_directory(path: Path) -> str:
    for parent in reversed([path, *path.parents]):
        if parent.exists() and not parent.is_dir():
            return repr(str(parent))
    return repr(str(path))


def _take_lock(path: Path) -> int | None:
    if fcntl is None:  # pragma: no cover
        return None
    fd = os.open(path / _LOCK, os.O_WRONLY | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _owner_gone(path: Path) -> bool:
    """True when the run that made ``path`` (a .partial folder) no longer runs."""
    if fcntl is None:  # pragma: no cover
        return False
    try:
        if time.time() - path.stat().st_mtime < STALE_SECONDS:
            return False
        fd = os.open(path / _LOCK, os.O_WRONLY | os.O_CREAT, 0o666)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _ensure_link(entry: Path, target: str) -> None:
    if entry.is_symlink() and os.readlink(entry) == target:
        return
    if entry.is_dir() and not entry.is_symlink():
        raise BadInputError(f"{str(entry)!r} is a directory: the output file cannot be published there")
    _replace_link(entry, target)


def _replace_link(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.symlink(target, tmp)
    except OSError as exc:
        raise BadInputError(f"output directory {str(link.parent)!r} cannot hold symbolic links: "
                            f"{exc.strerror or exc}") from None
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read_link(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except OSError:
        return None


def _remove_dangling_links(out: Path) -> None:
    """Our links whose file the current run does not have (a previous run's other model name)."""
    prefix = f"{RUNS}/{CURRENT}/"
    for entry in out.iterdir():
        if entry.is_symlink() and (_read_link(entry) or "").startswith(prefix) and not entry.exists():
            with contextlib.suppress(OSError):
                entry.unlink()


def _prune(runs: Path, keep: set, protect: tuple[Path, ...]) -> None:
    complete, failed = [], []
    for entry in sorted(runs.iterdir()):
        if entry.is_symlink() or not entry.is_dir() or entry.name in keep:
            continue
        if entry.name.endswith(PARTIAL):
            if _owner_gone(entry):
                complete.append(entry)
        elif entry.name.endswith(FAILED):
            failed.append(entry)
        else:
            complete.append(entry)
    doomed = complete + failed[:max(len(failed) - KEEP_FAILED, 0)]
    for entry in doomed:
        if any(entry.resolve() in p.resolve().parents for p in protect):
            continue
        _remove(entry)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block is done (main thread, POSIX); they are delivered after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
