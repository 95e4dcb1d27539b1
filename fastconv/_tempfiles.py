"""Temporary files written next to their target and renamed over it, and the cleanup of ones left behind.

A writer that is killed (SIGKILL, power loss) cannot remove its temporary file. Each writer therefore
holds an exclusive ``flock`` on its temporary file while it lives; the next writer of the same target
removes every temporary of that target that nobody holds locked, since its owner is gone.
"""
import contextlib
import os
import tempfile
import time

try:
    import fcntl
except ImportError:  # not on Windows: there, only temporaries untouched for an hour count as abandoned
    fcntl = None

# A temporary younger than this is left alone even when unlocked: its writer may be between creating
# the file and locking it.
_GRACE_SECONDS = 10.0
_UNLOCKED_PLATFORM_AGE_SECONDS = 3600.0


@contextlib.contextmanager
def locked_temporary(directory, prefix, suffix):
    """Create ``directory/<prefix>XXXX<suffix>`` and yield ``(fd, path)`` with the file locked.

    The caller owns ``fd`` (close it, e.g. through ``os.fdopen``) and moves or deletes ``path``; the
    lock goes with the last descriptor of the file.
    """
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a brand-new file: nobody else can hold it
    yield fd, path


def remove_abandoned(directory, prefix, suffix):
    """Delete the files ``directory/<prefix>*<suffix>`` whose writers are gone; return their paths."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        random_part = name[len(prefix):len(name) - len(suffix)]
        if not random_part or "." in random_part:  # another target's, e.g. ".a.b.x1y2.tmp" for prefix ".a."
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if _abandoned(path, now):
                os.unlink(path)
                removed.append(path)
    return removed


def _abandoned(path, now):
    status = os.lstat(path)
    age = now - status.st_mtime
    if fcntl is None:
        return age > _UNLOCKED_PLATFORM_AGE_SECONDS
    if age < _GRACE_SECONDS or not os.path.isfile(path) or os.path.islink(path):
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer holds it
    finally:
        os.close(fd)
    return True
