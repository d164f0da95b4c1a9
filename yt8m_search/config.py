"""Space files: YAML -> a typed, validated spec. The project's only YAML reader.

Validation collects every problem with its key path (``data.synthetic.seed: expected an integer,
got 'x'``) and raises them together as ``SpecError``, before anything is started or written.
``key=value`` overrides address any key by its dotted path; the value is parsed as YAML.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from yt8m_search.constants import MAX_FRAMES

DEFAULT_CACHE = "~/.cache/yt8m_search"


class SpecError(ValueError):
    """Every problem found in a space file, each with its key path."""

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{len(self.errors)} error(s):\n" + "\n".join(f"  - {e}" for e in self.errors))


@dataclass(frozen=True)
class SyntheticSpec:
    """A seeded synthetic YouTube-8M-like dataset, generated on first use into ``cache``."""

    train_videos: int = 2000
    validation_videos: int = 500
    shards: int = 4
    seed: int = 0
    num_classes: int = 3862
    max_frames: int = 300  # videos have 1..max_frames frames; fewer frames train faster on CPUs
    cache: str = DEFAULT_CACHE

    def key(self) -> str:
        """A short hash of everything that determines the data (not where it is cached)."""
        fields = {k: v for k, v in asdict(self).items() if k != "cache"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DataSpec:
    """Either Parquet shard locations (local or s3://) or a synthetic dataset."""

    train: str | None = None
    validation: str | None = None
    synthetic: SyntheticSpec | None = None


@dataclass(frozen=True)
class Spec:
    data: DataSpec
    source: str = ""
    raw: dict[str, Any] | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reading


class _Checker:
    """Typed field access on a YAML mapping that records errors instead of raising."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def mapping(self, value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.errors.append(f"{path or '<top level>'}: expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                where = f"{path}." if path else ""
                self.errors.append(f"{where}{key}: unknown key (valid: {', '.join(allowed)})")
        return value

    def integer(
        self, section: dict[str, Any], key: str, path: str, default: int, minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = section.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.errors.append(f"{path}.{key}: expected an integer, got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.errors.append(f"{path}.{key}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            self.errors.append(f"{path}.{key}: must be <= {maximum}, got {value}")
        return value

    def string(self, section: dict[str, Any], key: str, path: str, default: str | None) -> str | None:
        value = section.get(key, default)
        if value is not None and not isinstance(value, str):
            self.errors.append(f"{path}.{key}: expected a string, got {value!r}")
            return default
        return value


def _data_spec(raw: Any, check: _Checker) -> DataSpec:
    section = check.mapping(raw, "data", ["train", "validation", "synthetic"])
    synthetic = None
    if "synthetic" in section:
        syn = check.mapping(section["synthetic"], "data.synthetic", list(SyntheticSpec.__dataclass_fields__))
        path, d = "data.synthetic", SyntheticSpec()
        synthetic = SyntheticSpec(
            train_videos=check.integer(syn, "train_videos", path, d.train_videos, 1),
            validation_videos=check.integer(syn, "validation_videos", path, d.validation_videos, 1),
            shards=check.integer(syn, "shards", path, d.shards, 1),
            seed=check.integer(syn, "seed", path, d.seed, 0),
            num_classes=check.integer(syn, "num_classes", path, d.num_classes, 2),
            max_frames=check.integer(syn, "max_frames", path, d.max_frames, 1, MAX_FRAMES),
            cache=check.string(syn, "cache", path, d.cache) or d.cache,
        )
    train = check.string(section, "train", "data", None)
    validation = check.string(section, "validation", "data", None)
    if synthetic is not None and (train or validation):
        check.errors.append("data: give either synthetic or train/validation paths, not both")
    if synthetic is None and not (train and validation):
        check.errors.append("data: needs both train and validation Parquet paths, or a synthetic section")
    return DataSpec(train=train, validation=validation, synthetic=synthetic)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """Apply ``a.b.c=value`` overrides in place (values parsed as YAML); return the errors."""
    errors = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            errors.append(f"override {item!r}: expected key.path=value")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            errors.append(f"override {key}: cannot parse value {text!r}: {err}")
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                errors.append(f"override {key}: {part} is not a mapping")
                break
            node = child
        else:
            node[parts[-1]] = value
    return errors


def parse(raw: Any, source: str = "") -> Spec:
    check = _Checker()
    top = check.mapping(raw, "", ["data"])
    data = _data_spec(top.get("data"), check)
    if check.errors:
        raise SpecError(check.errors, source)
    return Spec(data=data, source=source, raw=top)


def load(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read, override and validate a space file; raises ``SpecError`` listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SpecError([f"cannot read the space file: {err.strerror or err}"], source) from err
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], source) from err
    if not isinstance(raw, dict):
        raise SpecError([f"<top level>: expected a mapping, got {type(raw).__name__}"], source)
    errors = apply_overrides(raw, overrides)
    if errors:
        raise SpecError(errors, source)
    return parse(raw, source)
