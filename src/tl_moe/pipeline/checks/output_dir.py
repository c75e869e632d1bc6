"""The output folder: a folder (existing or to be created) that this process can write."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tl_moe.pipeline.checks.errors import OutputDirError

__all__ = ["check_output_dir"]


def check_output_dir(path: str | os.PathLike, *, input_name: str = "--out") -> Path:
    """``path`` as a Path if it is (or can be created as) a writable folder; nothing is created.

    Writability is tested by creating and deleting a temporary file in the folder, or in its
    nearest existing parent when it does not exist yet (permission bits alone mislead as root
    and on read-only mounts).

    Raises:
        OutputDirError: ``path`` (or a parent) is a file, or the folder cannot be written.
    """
    path = Path(path).expanduser()
    accepted = "accepted: a writable folder, existing or to be created"
    if path.exists() and not path.is_dir():
        raise OutputDirError(
            f"{input_name} {str(path)!r} is a file, not a folder; {accepted}.", input_name=input_name
        )
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputDirError(
            f"{input_name} {str(path)!r} cannot be created: {str(probe)!r} is a file; {accepted}.",
            input_name=input_name,
        )
    try:
        handle, temporary = tempfile.mkstemp(prefix=".tl_moe-write-test-", dir=probe)
        os.close(handle)
        os.unlink(temporary)
    except OSError as error:
        what = "is not writable" if probe == path else f"cannot be created in {str(probe)!r}"
        reason = error.strerror or type(error).__name__
        raise OutputDirError(
            f"{input_name} {str(path)!r} {what} ({reason}); {accepted}.", input_name=input_name
        ) from None
    return path
