"""Space files: YAML -> a typed, validated spec. The project's only YAML reader.

Validation collects every problem with its key path (``data.synthetic.seed: expected an integer,
got 'x'``) and raises them together as ``SpecError``, before anything is started or written.
``key=value`` overrides address any key by its dotted path; the value is parsed as YAML.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from yt8m_search.config.budget import check_eigenvalues, check_families, check_models
from yt8m_search.config.checker import Checker, number
from yt8m_search.config.recipe import check_recipes
from yt8m_search.config.spec import (
    DEFAULT_SHARD_CACHE,
    DEFAULT_SHARD_CACHE_GB,
    OBJECTIVES,
    SAMPLERS,
    AshaSpec,
    BudgetSpec,
    DataSpec,
    Distribution,
    Parameter,
    SearchSpec,
    Spec,
    SpecError,
    SyntheticSpec,
    WandbSpec,
)
from yt8m_search.config.trial import TrialSettings
from yt8m_search.constants import MAX_FRAMES
from yt8m_search.data.cache import ShardCache

_DIST_KEYS = ("choice", "int", "float", "logfloat")
_SECTIONS = ["data", "model", "trial", "search", "budget", "storage", "wandb"]


def _synthetic_spec(raw: Any, check: Checker) -> SyntheticSpec:
    syn = check.mapping(raw, "data.synthetic", list(SyntheticSpec.__dataclass_fields__))
    path, d = "data.synthetic", SyntheticSpec()
    return SyntheticSpec(
        train_videos=check.integer(syn, "train_videos", path, d.train_videos, 1),
        validation_videos=check.integer(syn, "validation_videos", path, d.validation_videos, 1),
        shards=check.integer(syn, "shards", path, d.shards, 1),
        seed=check.integer(syn, "seed", path, d.seed, 0),
        num_classes=check.integer(syn, "num_classes", path, d.num_classes, 2),
        max_frames=check.integer(syn, "max_frames", path, d.max_frames, 1, MAX_FRAMES),
        cache=check.string(syn, "cache", path, d.cache) or d.cache,
    )


def _shard_cache(raw: Any, check: Checker) -> ShardCache | None:
    """``data.shard_cache``: absent, null or false (off), true (the defaults) or ``{dir, max_gb}``."""
    if raw is None or raw is False:
        return None
    path = "data.shard_cache"
    if raw is not True and not isinstance(raw, dict):
        check.errors.append(f"{path}: expected true, false, null or a mapping with dir and max_gb, got {raw!r}")
        return None
    section = check.mapping({} if raw is True else raw, path, ["dir", "max_gb"])
    directory = check.string(section, "dir", path, DEFAULT_SHARD_CACHE) or DEFAULT_SHARD_CACHE
    if "://" in directory:  # each node's own disk: a remote cache of remote shards saves nothing
        check.errors.append(f"{path}.dir: must be a local directory, got {directory!r}")
        return None
    gigabytes = number(section.get("max_gb", DEFAULT_SHARD_CACHE_GB))
    if gigabytes is None or not math.isfinite(gigabytes) or int(gigabytes * 1e9) <= 0:
        check.errors.append(f"{path}.max_gb: expected a positive number of gigabytes (10^9 bytes), "
                            f"got {section.get('max_gb')!r}")
        return None
    # absolute on the driver: Ray workers run in other working directories
    return ShardCache(os.path.abspath(os.path.expanduser(directory)), int(gigabytes * 1e9))


def _data_spec(raw: Any, check: Checker) -> DataSpec:
    section = check.mapping(raw, "data", ["train", "validation", "synthetic", "pca_eigenvals", "shard_cache",
                                              "holdout_fraction"])
    synthetic = None
    if section.get("synthetic") is not None:  # `data.synthetic=null` switches to the given paths
        synthetic = _synthetic_spec(section["synthetic"], check)
    train = check.string(section, "train", "data", None)
    validation = check.string(section, "validation", "data", None)
    if synthetic is not None and (train or validation):
        check.errors.append("data: give either synthetic or train/validation paths, not both")
    if synthetic is None and not (train and validation):
        check.errors.append("data: needs both train and validation Parquet paths, or a synthetic section")
    eigenvals = check.string(section, "pca_eigenvals", "data", None)
    return DataSpec(train=train, validation=validation, synthetic=synthetic, pca_eigenvals=eigenvals,
                    shard_cache=_shard_cache(section.get("shard_cache"), check),
                    holdout_fraction=_holdout_fraction(section.get("holdout_fraction", 0.2), check))


def _holdout_fraction(raw: Any, check: Checker) -> float:
    """``data.holdout_fraction``: in [0, 0.9]; 0 turns the holdout off (figures on it are then NaN)."""
    value = number(raw)
    if value is None or not 0.0 <= value <= 0.9:
        check.errors.append(f"data.holdout_fraction: expected a number from 0 to 0.9, got {raw!r}")
        return 0.2
    return float(value)


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


def _parameter(name: str, path: str, section: str, raw: Any, check: Checker) -> Parameter:
    """A fixed value, or a mapping with one of choice/int/float/logfloat (+ step, log, when)."""
    if not isinstance(raw, dict):
        return Parameter(name, path, section, value=raw)
    check.mapping(raw, path, [*_DIST_KEYS, "value", "step", "log", "when"])
    when = _conditions(raw.get("when"), f"{path}.when", check)
    kinds = [k for k in (*_DIST_KEYS, "value") if k in raw]
    if len(kinds) != 1:
        check.errors.append(f"{path}: give exactly one of choice, int, float, logfloat or value")
        return Parameter(name, path, section, when=when)
    kind = kinds[0]
    if kind == "value":
        return Parameter(name, path, section, value=raw["value"], when=when)
    if kind == "choice":
        choices = raw["choice"]
        if not isinstance(choices, list) or not choices:
            check.errors.append(f"{path}.choice: expected a non-empty list, got {choices!r}")
            choices = [None]
        return Parameter(name, path, section, distribution=Distribution("choice", choices=tuple(choices)), when=when)
    dist = _range(raw, kind, path, check)
    return Parameter(name, path, section, distribution=dist, when=when)


def _range(raw: dict[str, Any], kind: str, path: str, check: Checker) -> Distribution | None:
    """``int``/``float``/``logfloat: [low, high]`` (+ ``step``, ``log``) as a Distribution; None if malformed."""
    bounds = raw[kind]
    low, high = (bounds if isinstance(bounds, list) and len(bounds) == 2 else (None, None))
    low_n, high_n, step = number(low), number(high), raw.get("step")
    log = kind == "logfloat" or bool(raw.get("log", False))
    where = f"{path}.{kind}"
    if low_n is None or high_n is None:
        check.errors.append(f"{where}: expected [low, high] numbers, got {bounds!r}")
        return None
    if kind == "int" and not (float(low_n).is_integer() and float(high_n).is_integer()):
        check.errors.append(f"{where}: int bounds must be integers, got {bounds!r}")
    if low_n > high_n:
        check.errors.append(f"{where}: empty range, low {low} > high {high}")
    if log and low_n <= 0:
        check.errors.append(f"{where}: a log range needs low > 0, got {low}")
    if step is not None:
        step_n = number(step)
        if step_n is None or step_n <= 0 or log:
            check.errors.append(f"{path}.step: must be a positive number and not combined with log, got {step!r}")
        elif kind == "int" and ((high_n - low_n) % step_n or not float(step_n).is_integer()):
            check.errors.append(f"{path}.step: {step} must be an integer dividing high - low")
        step = step_n
    if kind == "int":
        return Distribution("int", int(low_n), int(high_n), int(step) if step else None, log)
    return Distribution("float", low_n, high_n, step, log)


def _conditions(raw: Any, path: str, check: Checker) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        check.errors.append(f"{path}: expected a mapping of parameter: value(s), got {raw!r}")
        return ()
    return tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in raw.items())


def _is_variants(raw: Any) -> bool:
    """A list of mappings: one fixed value per condition (``[{value: 128, when: {family: a}}, ...]``)."""
    return isinstance(raw, list) and bool(raw) and all(isinstance(item, dict) for item in raw)


def _variants(raw: Any, path: str, check: Checker) -> list[tuple[str, Any]]:
    """(key path, raw) of each value a key gives: its one value, or each of its per-condition fixed
    values (each needs ``value`` and ``when``; ``_check_conditions`` checks that they exclude each other)."""
    if not _is_variants(raw):
        return [(path, raw)]
    out = []
    for i, item in enumerate(raw):
        if "value" not in item or "when" not in item:
            check.errors.append(f"{path}[{i}]: a per-condition value needs value and when, "
                                f"e.g. {{value: 112, when: {{family: mix_nextvlad}}}}; got {item!r}")
            continue
        out.append((f"{path}[{i}]", item))
    return out


def _model_parameters(raw: Any, check: Checker) -> list[Parameter]:
    section = check.mapping(raw, "model", ["family", "hparams"])
    if "family" not in section:
        check.errors.append("model.family: missing (a registered model name, or a choice of them)")
    family = _parameter("family", "model.family", "model", section.get("family"), check)
    hparams = check.mapping(section.get("hparams"), "model.hparams", list(section.get("hparams") or {}))
    params = [family]
    for key, value in hparams.items():
        for path, item in _variants(value, f"model.hparams.{key}", check):
            params.append(_parameter(str(key), path, "hparams", item, check))
    return params


def _trial_settings(raw: Any, check: Checker) -> tuple[TrialSettings, list[Parameter], frozenset[str]]:
    """The fixed trial settings (``TrialSettings``: its defaults, types and rules), the searched
    ones (Parameters of section ``trial``, only for the searchable settings) and the names of the
    fixed ones the space sets (the others take the family's recipe default, ``config.recipe``)."""
    section = check.mapping(raw, "trial", list(TrialSettings.names()))
    fixed: dict[str, Any] = {}
    searched: list[Parameter] = []
    for key in TrialSettings.names():
        if key not in section:
            continue
        value, path = section[key], f"trial.{key}"
        if isinstance(value, dict) or _is_variants(value):
            if key not in TrialSettings.searchable_names():
                what = "be searched" if isinstance(value, dict) else "take per-condition values"
                searchable = ", ".join(TrialSettings.searchable_names())
                check.errors.append(f"{path}: cannot {what} (searchable: {searchable})")
                continue
            searched.extend(_searched_setting(key, where, item, check) for where, item in _variants(value, path, check))
            continue
        wrong = TrialSettings.rules()[key].type_problem(value)
        if wrong:
            check.errors.append(f"{path}: {wrong}")
            continue
        fixed[key] = value
    settings = TrialSettings(**fixed)
    check.errors.extend(settings.validate())
    return settings, searched, frozenset(fixed)


def _searched_setting(key: str, path: str, raw: dict[str, Any], check: Checker) -> Parameter:
    """A searched trial setting; its choices or range ends are checked against the setting's rule."""
    param = _parameter(key, path, "trial", raw, check)
    dist = param.distribution
    if dist is None:
        ends = [] if param.value is None else [param.value]  # `{value: x}`, or a malformed range (reported)
    else:
        ends = list(dist.choices) if dist.kind == "choice" else [dist.low, dist.high]
    for value in ends:
        problem = TrialSettings.value_problem(key, TrialSettings.sampled(key, value) if dist else value)
        if problem:
            check.errors.append(f"{path}: {problem}")
    return param


def _search_spec(raw: Any, check: Checker, epochs: int) -> SearchSpec:
    section = check.mapping(raw, "search", list(SearchSpec.__dataclass_fields__))
    d = SearchSpec()
    objectives = section.get("objectives", "gap")
    objectives = tuple(objectives) if isinstance(objectives, list) else (objectives,)
    costs = [o for o in objectives[1:] if isinstance(o, str) and o in OBJECTIVES[1:]]
    if objectives[:1] != ("gap",) or len(set(costs)) != len(costs) or len(costs) != len(objectives) - 1:
        check.errors.append("search.objectives: must be gap, [gap, size], [gap, flops] or [gap, size, flops] "
                            f"(GAP maximised first, then the costs minimised), got {section.get('objectives')!r}")
        objectives = d.objectives
    sampler = section.get("sampler", d.sampler)
    if sampler not in SAMPLERS:
        check.errors.append(f"search.sampler: must be one of {list(SAMPLERS)}, got {sampler!r}")
        sampler = d.sampler
    max_concurrent = section.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = check.integer(section, "max_concurrent", "search", 1, 1)
    return SearchSpec(
        num_samples=check.integer(section, "num_samples", "search", d.num_samples, 1),
        max_concurrent=max_concurrent,
        seed=check.integer(section, "seed", "search", d.seed, 0),
        objectives=objectives,
        asha=_asha_spec(section, check, epochs),
        startup_trials=check.integer(section, "startup_trials", "search", d.startup_trials, 0),
        max_failures=check.integer(section, "max_failures", "search", d.max_failures, 0),
        sampler=sampler,
    )


def _asha_spec(section: dict[str, Any], check: Checker, epochs: int) -> AshaSpec | None:
    if "asha" not in section:
        return SearchSpec().asha
    if section["asha"] in (None, False):
        return None
    a = check.mapping(section["asha"], "search.asha", list(AshaSpec.__dataclass_fields__))
    asha = AshaSpec(
        grace_period=check.integer(a, "grace_period", "search.asha", 1, 1),
        reduction_factor=check.integer(a, "reduction_factor", "search.asha", 2, 2),
        noise_margin=_noise_margin(a.get("noise_margin", AshaSpec.noise_margin), check),
    )
    if asha.grace_period > epochs:
        check.errors.append(f"search.asha.grace_period: {asha.grace_period} exceeds trial.epochs {epochs}")
    return asha


def _noise_margin(raw: Any, check: Checker) -> float:
    value = number(raw)
    if value is None or not 0 <= value <= 10:
        check.errors.append(f"search.asha.noise_margin: expected a number of standard errors from 0 to 10, got {raw!r}")
        return AshaSpec.noise_margin
    return float(value)


def _budget_spec(raw: Any, check: Checker) -> BudgetSpec:
    section = check.mapping(raw, "budget", list(BudgetSpec.__dataclass_fields__))
    d = BudgetSpec()
    sizes: dict[str, int | None] = {}
    for key, default in (("max_model_bytes", d.max_model_bytes), ("ensemble_bytes", d.ensemble_bytes),
                         ("max_flops", d.max_flops), ("ensemble_flops", d.ensemble_flops)):
        value = section.get(key, default)
        n = number(value) if value is not None else None
        if value is not None and (n is None or n <= 0):
            unit = "FLOPs per video" if key.endswith("flops") else "bytes"
            check.errors.append(f"budget.{key}: expected a positive number of {unit}, got {value!r}")
        sizes[key] = int(n) if n else default
    dtype = check.string(section, "storage_dtype", "budget", d.storage_dtype) or d.storage_dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        check.errors.append(f"budget.storage_dtype: must be float32, bfloat16 or float16, got {dtype!r}")
    return BudgetSpec(sizes["max_model_bytes"], sizes["ensemble_bytes"] or d.ensemble_bytes, dtype,
                      max_flops=sizes["max_flops"], ensemble_flops=sizes["ensemble_flops"])


def _wandb_spec(raw: Any, check: Checker) -> WandbSpec:
    section = check.mapping(raw, "wandb", list(WandbSpec.__dataclass_fields__))
    d = WandbSpec()
    mode = check.string(section, "mode", "wandb", d.mode) or d.mode
    if mode not in ("offline", "online", "disabled"):
        check.errors.append(f"wandb.mode: must be offline, online or disabled, got {mode!r}")
    return WandbSpec(
        project=check.string(section, "project", "wandb", d.project) or d.project,
        mode=mode,
        entity=check.string(section, "entity", "wandb", None),
    )


def _exclusive(a: Parameter, b: Parameter) -> bool:
    """No trial has both: some condition of both allows disjoint values."""
    other = dict(b.when)
    return any(name in other and not set(allowed) & set(other[name]) for name, allowed in a.when)


def _check_conditions(params: list[Parameter], check: Checker) -> None:
    """Every name defined once, or as fixed values under conditions that exclude each other; every
    condition on an existing parameter, with a value it can take."""
    by_name: dict[str, list[Parameter]] = {}
    for p in params:
        by_name.setdefault(p.name, []).append(p)
    for name, same in by_name.items():
        variants = all(p.distribution is None for p in same) and all(
            _exclusive(a, b) for i, a in enumerate(same) for b in same[i + 1:])
        if len(same) > 1 and not variants:
            check.errors.append(f"{name}: defined twice ({', '.join(p.path for p in same)}); per-condition "
                                "values must be fixed, under conditions that exclude each other")
    for p in params:
        for cond, allowed in p.when:
            if cond not in by_name:
                check.errors.append(f"{p.path}.when: condition on a missing parameter {cond!r}")
                continue
            sources = by_name[cond]
            if any(q.distribution is not None and q.distribution.kind != "choice" for q in sources):
                continue  # a range: any value may come
            possible = [v for q in sources for v in q.possible_values()]
            if not set(allowed) & set(possible):
                check.errors.append(f"{p.path}.when: {cond} never takes {list(allowed)} (possible: {possible})")


def _sorted_by_conditions(params: list[Parameter], check: Checker) -> list[Parameter]:
    """Order parameters so that every condition is sampled before what depends on it."""
    _check_conditions(params, check)
    unplaced = collections.Counter(p.name for p in params)  # a name is placed once all its variants are
    ordered: list[Parameter] = []
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(not unplaced[c] for c, _ in p.when)]
        if not ready:
            check.errors.append("conditions form a cycle: " + ", ".join(p.path for p in pending))
            return ordered + pending
        for p in ready:
            ordered.append(p)
            unplaced[p.name] -= 1
            pending.remove(p)
    return ordered


def _check_grid(params: Sequence[Parameter], search: SearchSpec, check: Checker) -> None:
    """``search.sampler: grid`` runs every combination of the searched choices once: it needs
    choices only, and at least as many trials as combinations."""
    if search.sampler != "grid":
        return
    points = 1
    for p in params:
        if p.distribution is not None and p.distribution.kind != "choice":
            check.errors.append(f"{p.path}: search.sampler grid needs choices, got a {p.distribution.kind} range")
        elif p.distribution is not None:
            points *= len(p.distribution.choices)
    if search.num_samples < points:
        check.errors.append(f"search.num_samples: {search.num_samples} trials cannot cover the grid's {points} points")


def parse(raw: Any, source: str = "", name: str = "space") -> Spec:
    check = Checker()
    top = check.mapping(raw, "", _SECTIONS)
    data = _data_spec(top.get("data"), check)
    model_params = _model_parameters(top.get("model"), check)
    trial, trial_params, trial_explicit = _trial_settings(top.get("trial"), check)
    search = _search_spec(top.get("search"), check, trial.epochs)
    budget = _budget_spec(top.get("budget"), check)
    storage = check.string(top, "storage", "storage", "runs") or "runs"
    wandb = _wandb_spec(top.get("wandb"), check)
    params = _sorted_by_conditions(model_params + trial_params, check)
    _check_grid(params, search, check)
    check_families(model_params[0], check)
    check_recipes([str(f) for f in model_params[0].possible_values()], trial, trial_explicit, trial_params, check)
    check_eigenvalues(params, data, check)  # reported with the others: it needs no valid model
    if not check.errors:
        check_models(params, budget, check)
    if check.errors:
        raise SpecError(check.errors, source)
    return Spec(data=data, parameters=tuple(params), trial=trial, trial_explicit=trial_explicit, search=search,
                budget=budget, storage=storage, wandb=wandb, name=name, source=source, raw=top)


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
    return parse(raw, source, name=Path(path).stem)


__all__ = ["apply_overrides", "load", "parse"]
