"""An exclusive lock across processes: parallel jobs share one data prepare and one MHA parent through it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, on_wait: Callable[[int | None], None] | None = None,
              remove: bool = False) -> Iterator[None]:
    """Hold an flock on `path`, whose text is the holder's pid. When another process holds it, `on_wait(pid)` is
    called once before blocking. `remove` deletes the file on release: a finished or failed job leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+")  # noqa: SIM115 (append: never truncates a lock file another process holds)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(_pid_in(f))
                on_wait = None
            fcntl.flock(f, fcntl.LOCK_EX)
        if not remove or _still_at(f, path):
            break
        f.close()  # the holder removed the file while we waited; a newcomer may hold a new one, so lock that
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield
    finally:
        if remove:
            path.unlink(missing_ok=True)  # before the unlock: a waiter then finds its file gone and retries
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _pid_in(f) -> int | None:
    f.seek(0)
    try:
        return int(f.read().strip())
    except ValueError:
        return None


def _still_at(f, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
