"""Where a bundle is written: a new or empty directory, or one holding an earlier bundle of the
same kind (committed or interrupted), and nothing else.

A bundle is committed by its ``config.json``, written last. Replacing one first removes that
file (uncommits it), so a crash mid-write leaves a directory no loader accepts. raylrec never
removes or overwrites a file it cannot prove it wrote: a ``config.json`` of another format (a
Hugging Face model directory, say) or any name outside the bundle's layout is refused, naming it.
"""

from __future__ import annotations

from collections.abc import Iterable

from raylrec import storage

__all__ = ["BundleDirError", "claim_bundle_dir"]

CONFIG_FILE = "config.json"


class BundleDirError(FileExistsError):
    """The directory holds something raylrec did not write; nothing was touched."""


def claim_bundle_dir(out: str, format_prefix: str, layout: Iterable[str]) -> None:
    """Make ``out`` ready for a bundle whose ``config.json`` format starts with
    ``format_prefix`` and whose other top-level entries are among ``layout``."""
    fs, path = storage.filesystem(out)
    if fs.isfile(path):
        raise BundleDirError(f"{out} is a file; a bundle is written to a directory")
    entries = storage.entry_names(out)
    config = storage.join(path, CONFIG_FILE)
    if CONFIG_FILE in entries:
        found = storage.read_json(storage.join(out, CONFIG_FILE))
        kind = found.get("format") if isinstance(found, dict) else None
        if not str(kind or "").startswith(format_prefix):
            raise BundleDirError(
                f"{out} holds a {CONFIG_FILE} that is not a {format_prefix} bundle (format {kind!r}): "
                "not replacing it; choose another output directory"
            )
    foreign = entries - {CONFIG_FILE, *layout}
    if foreign:
        shown = ", ".join(repr(n) for n in sorted(foreign)[:5])
        raise BundleDirError(
            f"{out} holds {shown}{' and more' if len(foreign) > 5 else ''}, which is not part of a "
            f"{format_prefix} bundle: choose a new or empty output directory (nothing was touched)"
        )
    fs.makedirs(path, exist_ok=True)
    if CONFIG_FILE in entries:
        fs.rm(config)  # uncommit the old bundle before replacing it
