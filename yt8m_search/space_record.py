"""The run folder's record of the space a sweep started with (``space.json``), so that ``--resume``
continues that sweep and no other.

A restored Tune experiment keeps the searcher, the trials and the configurations it was started
with, while the summary and the ensemble step read the space given on the command line: a resume
with a changed space or changed overrides would mix the two. ``write`` records the space as
resolved (the space file plus the overrides) as a flat mapping of key paths to values, with the
file and the overrides given (for the reader); ``differences`` compares a resolved space with it
key by key. Every key counts (none is known to leave a running sweep alone); the file's path and
the overrides' spelling do not, only what they resolve to.

Written and read through ``data.fs``: an ``s3://`` run folder holds its record too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from yt8m_search.config import Spec
from yt8m_search.data import fs

SPACE_FILE = "space.json"
VERSION = 1


class _Unset:
    def __repr__(self) -> str:
        return "(unset)"


_UNSET = _Unset()


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}``; lists and empty mappings are values."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def resolved(spec: Spec) -> dict[str, Any]:
    """The space as resolved, key path -> value, as JSON reads it back (YAML's dates and the like
    as text), plus ``name`` (the space's name: its W&B group and summary)."""
    values = {"name": spec.name, **flatten(spec.raw or {})}
    return json.loads(json.dumps(values, default=str))


def record(spec: Spec, overrides: Sequence[str]) -> dict[str, Any]:
    return {"version": VERSION, "space": spec.source, "overrides": list(overrides), "hash": spec.digest(),
            "values": resolved(spec)}  # fmt: skip


def path_in(run_dir: str) -> str:
    return fs.join(run_dir, SPACE_FILE)


def write(spec: Spec, overrides: Sequence[str], run_dir: str) -> str:
    """Write ``<run_dir>/space.json`` all-or-nothing; returns its path."""
    path = path_in(run_dir)
    with fs.atomic_output(path) as f:
        f.write((json.dumps(record(spec, overrides), indent=2) + "\n").encode())
    return path


def read(run_dir: str) -> dict[str, Any] | None:
    """The recorded space's values, key path -> value; None when the run folder has no record (a
    run from before it was written). Raises ``ValueError`` naming the file when it is unreadable."""
    path = path_in(run_dir)
    if not fs.exists(path):
        return None
    try:
        raw = json.loads(fs.read_bytes(path))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("values"), dict):
        raise ValueError(f"{path}: not a space record (no values mapping)")
    return raw["values"]


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value) if value is _UNSET else json.dumps(value)


def differences(recorded: Mapping[str, Any], spec: Spec) -> list[str]:
    """``key.path: old -> new`` for every key whose value differs between the recorded space and
    ``spec`` (set in one only: ``(unset)`` on the other side), in the recorded order, then the new keys."""
    now = resolved(spec)
    out = []
    for key in list(recorded) + [k for k in now if k not in recorded]:
        old, new = recorded.get(key, _UNSET), now.get(key, _UNSET)
        if old != new or isinstance(old, bool) != isinstance(new, bool):  # true is not 1
            out.append(f"{key}: {_shown(old)} -> {_shown(new)}")
    return out


__all__ = ["SPACE_FILE", "differences", "flatten", "read", "record", "resolved", "write"]
