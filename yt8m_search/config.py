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

from yt8m_search.constants import MAX_FRAMES, PLACEMENT_STRATEGIES

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
class Distribution:
    """A searched value: ``int`` / ``float`` in [low, high] (``log``, ``step``) or a ``choice``."""

    kind: str  # "int" | "float" | "choice"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def candidates(self, dense: int = 64) -> list[Any]:
        """Values to try when checking the budget: all choices, or a grid over the range."""
        if self.kind == "choice":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            step = int(self.step or 1)
            values = list(range(int(self.low), int(self.high) + 1, step))
            if len(values) > dense:
                values = sorted({values[round(i * (len(values) - 1) / (dense - 1))] for i in range(dense)})
            return values
        return [self.low, (self.low + self.high) / 2, self.high]


@dataclass(frozen=True)
class Parameter:
    """One named value of a trial: fixed or searched, possibly present only under a condition.

    ``name`` is the flat name Optuna, the trial config and W&B use; ``path`` where it is written.
    ``when`` maps other parameters' names to the values under which this one exists.
    """

    name: str
    path: str
    section: str  # "model" (the family), "hparams" or "trial"
    value: Any = None
    distribution: Distribution | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def possible_values(self) -> list[Any]:
        return self.distribution.candidates() if self.distribution else [self.value]


TRIAL_FIELDS: dict[str, Any] = {
    # name: (default, searchable)
    "epochs": (3, False),
    "num_workers": (1, False),
    "gpus_per_worker": (0, False),
    "cpus_per_worker": (1.0, False),
    "batch_size": (160, False),
    "eval_batch_size": (256, False),
    "pad_to": (None, False),
    "shuffle_buffer": (2048, False),
    "keep_checkpoints": (2, False),
    "average_last": (0, False),
    "prediction_top_k": (20, False),
    "max_failures": (2, False),
    "max_steps_per_epoch": (None, False),
    "placement_strategy": ("PACK", False),
    "learning_rate": (2e-4, True),
    "lr_decay": (0.8, True),
    "lr_decay_examples": (2_000_000, True),
    "l2": (1e-5, True),
    "clip_norm": (1.0, True),
}

TRIAL_CHOICES: dict[str, tuple[str, ...]] = {"placement_strategy": PLACEMENT_STRATEGIES}  # the non-numeric fields


@dataclass(frozen=True)
class AshaSpec:
    grace_period: int = 1
    reduction_factor: int = 2


SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class SearchSpec:
    num_samples: int = 8
    max_concurrent: int | None = None  # None: as many as the cluster holds at the start; set: that many (autoscaling)
    seed: int = 0
    objectives: tuple[str, ...] = ("gap",)  # or ("gap", "size")
    asha: AshaSpec | None = AshaSpec()
    startup_trials: int = 4  # random trials before TPE models the space
    sampler: str = "tpe"  # tpe | random (a baseline: what TPE gains)
    max_failures: int = 1  # Tune-level retries of a crashed trial (resumes from its checkpoint)


@dataclass(frozen=True)
class BudgetSpec:
    max_model_bytes: int | None = None  # per trained model, at storage_dtype; None: no limit
    ensemble_bytes: int = 10**9  # the 2nd YouTube-8M challenge's 1 GB, as 10^9 bytes
    storage_dtype: str = "bfloat16"


@dataclass(frozen=True)
class WandbSpec:
    project: str = "yt8m-search"
    mode: str = "offline"  # offline | online | disabled; online needs WANDB_API_KEY
    entity: str | None = None


@dataclass(frozen=True)
class Spec:
    data: DataSpec
    parameters: tuple[Parameter, ...] = ()  # topologically sorted: conditions before dependents
    trial: dict[str, Any] | None = None  # fixed trial fields (TRIAL_FIELDS minus searched ones)
    search: SearchSpec = SearchSpec()
    budget: BudgetSpec = BudgetSpec()
    storage: str = "runs"
    wandb: WandbSpec = WandbSpec()
    name: str = "space"
    source: str = ""
    raw: dict[str, Any] | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def parameter(self, name: str) -> Parameter:
        return next(p for p in self.parameters if p.name == name)

    @property
    def families(self) -> list[str]:
        return [str(v) for v in self.parameter("family").possible_values()]

    @property
    def multi_objective(self) -> bool:
        return len(self.search.objectives) > 1


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
    if section.get("synthetic") is not None:  # `data.synthetic=null` switches to the given paths
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


_DIST_KEYS = ("choice", "int", "float", "logfloat")
_SECTIONS = ["data", "model", "trial", "search", "budget", "storage", "wandb"]


def _number(value: Any) -> float | None:
    """YAML 1.1 reads 5e6 as a string; accept numeric strings for sizes and rates."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _parameter(name: str, path: str, section: str, raw: Any, check: _Checker) -> Parameter:
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
    bounds = raw[kind]
    low, high = (bounds if isinstance(bounds, list) and len(bounds) == 2 else (None, None))
    low_n, high_n, step = _number(low), _number(high), raw.get("step")
    log = kind == "logfloat" or bool(raw.get("log", False))
    where = f"{path}.{kind}"
    if low_n is None or high_n is None:
        check.errors.append(f"{where}: expected [low, high] numbers, got {bounds!r}")
        return Parameter(name, path, section, when=when)
    if kind == "int" and not (float(low_n).is_integer() and float(high_n).is_integer()):
        check.errors.append(f"{where}: int bounds must be integers, got {bounds!r}")
    if low_n > high_n:
        check.errors.append(f"{where}: empty range, low {low} > high {high}")
    if log and low_n <= 0:
        check.errors.append(f"{where}: a log range needs low > 0, got {low}")
    if step is not None:
        step_n = _number(step)
        if step_n is None or step_n <= 0 or log:
            check.errors.append(f"{path}.step: must be a positive number and not combined with log, got {step!r}")
        elif kind == "int" and ((high_n - low_n) % step_n or not float(step_n).is_integer()):
            check.errors.append(f"{path}.step: {step} must be an integer dividing high - low")
        step = step_n
    dist = Distribution("int" if kind == "int" else "float", low_n, high_n, step, log)
    if kind == "int":
        dist = Distribution("int", int(low_n), int(high_n), int(step) if step else None, log)
    return Parameter(name, path, section, distribution=dist, when=when)


def _conditions(raw: Any, path: str, check: _Checker) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        check.errors.append(f"{path}: expected a mapping of parameter: value(s), got {raw!r}")
        return ()
    return tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in raw.items())


def _model_parameters(raw: Any, check: _Checker) -> list[Parameter]:
    section = check.mapping(raw, "model", ["family", "hparams"])
    if "family" not in section:
        check.errors.append("model.family: missing (a registered model name, or a choice of them)")
    family = _parameter("family", "model.family", "model", section.get("family"), check)
    hparams = check.mapping(section.get("hparams"), "model.hparams", list(section.get("hparams") or {}))
    params = [family]
    for key, value in hparams.items():
        params.append(_parameter(str(key), f"model.hparams.{key}", "hparams", value, check))
    return params


def _trial_parameters(raw: Any, check: _Checker) -> tuple[dict[str, Any], list[Parameter]]:
    section = check.mapping(raw, "trial", list(TRIAL_FIELDS))
    fixed: dict[str, Any] = {}
    searched: list[Parameter] = []
    for key, (default, searchable) in TRIAL_FIELDS.items():
        value = section.get(key, default)
        path = f"trial.{key}"
        if isinstance(value, dict):
            if not searchable:
                check.errors.append(f"{path}: cannot be searched (searchable: "
                                    f"{', '.join(k for k, (_, s) in TRIAL_FIELDS.items() if s)})")
                continue
            searched.append(_parameter(key, path, "trial", value, check))
            continue
        if key in TRIAL_CHOICES:
            if value not in TRIAL_CHOICES[key]:
                check.errors.append(f"{path}: must be one of {', '.join(TRIAL_CHOICES[key])}, got {value!r}")
                continue
        elif value is not None:
            number = _number(value)
            if number is None:
                check.errors.append(f"{path}: expected a number, got {value!r}")
                continue
            if isinstance(default, int) or key in ("pad_to", "max_steps_per_epoch"):
                if not number.is_integer():
                    check.errors.append(f"{path}: expected an integer, got {value!r}")
                    continue
                value = int(number)
            else:
                value = number
        fixed[key] = value
    for key in ("epochs", "num_workers", "batch_size", "eval_batch_size", "keep_checkpoints", "prediction_top_k"):
        if key in fixed and fixed[key] < 1:
            check.errors.append(f"trial.{key}: must be >= 1, got {fixed[key]}")
    for key in ("gpus_per_worker", "average_last", "max_failures", "shuffle_buffer"):
        if key in fixed and fixed[key] < 0:
            check.errors.append(f"trial.{key}: must be >= 0, got {fixed[key]}")
    if fixed.get("cpus_per_worker", 1) <= 0:
        check.errors.append("trial.cpus_per_worker: must be > 0 (a trial's resource request must be non-zero)")
    if fixed.get("pad_to") is not None and not 1 <= fixed["pad_to"] <= MAX_FRAMES:
        check.errors.append(f"trial.pad_to: must lie in [1, {MAX_FRAMES}], got {fixed['pad_to']}")
    if fixed.get("batch_size", 1) % max(fixed.get("num_workers", 1), 1):
        check.errors.append(f"trial.batch_size: {fixed['batch_size']} is not divisible by num_workers "
                            f"{fixed['num_workers']} (the global batch is split evenly)")
    if fixed.get("average_last", 0) > fixed.get("epochs", 1):
        check.errors.append("trial.average_last: cannot exceed trial.epochs")
    return fixed, searched


def _search_spec(raw: Any, check: _Checker, epochs: int) -> SearchSpec:
    section = check.mapping(raw, "search", list(SearchSpec.__dataclass_fields__))
    d = SearchSpec()
    objectives = section.get("objectives", "gap")
    objectives = tuple(objectives) if isinstance(objectives, list) else (objectives,)
    if objectives not in (("gap",), ("gap", "size")):
        check.errors.append(f"search.objectives: must be gap or [gap, size], got {section.get('objectives')!r}")
        objectives = d.objectives
    asha: AshaSpec | None = d.asha
    if "asha" in section:
        if section["asha"] in (None, False):
            asha = None
        else:
            a = check.mapping(section["asha"], "search.asha", list(AshaSpec.__dataclass_fields__))
            asha = AshaSpec(
                grace_period=check.integer(a, "grace_period", "search.asha", 1, 1),
                reduction_factor=check.integer(a, "reduction_factor", "search.asha", 2, 2),
            )
            if asha.grace_period > epochs:
                check.errors.append(f"search.asha.grace_period: {asha.grace_period} exceeds trial.epochs {epochs}")
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
        asha=asha,
        startup_trials=check.integer(section, "startup_trials", "search", d.startup_trials, 0),
        max_failures=check.integer(section, "max_failures", "search", d.max_failures, 0),
        sampler=sampler,
    )


def _budget_spec(raw: Any, check: _Checker) -> BudgetSpec:
    section = check.mapping(raw, "budget", list(BudgetSpec.__dataclass_fields__))
    d = BudgetSpec()
    sizes: dict[str, int | None] = {}
    for key, default in (("max_model_bytes", d.max_model_bytes), ("ensemble_bytes", d.ensemble_bytes)):
        value = section.get(key, default)
        number = _number(value) if value is not None else None
        if value is not None and (number is None or number <= 0):
            check.errors.append(f"budget.{key}: expected a positive number of bytes, got {value!r}")
        sizes[key] = int(number) if number else default
    dtype = check.string(section, "storage_dtype", "budget", d.storage_dtype) or d.storage_dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        check.errors.append(f"budget.storage_dtype: must be float32, bfloat16 or float16, got {dtype!r}")
    return BudgetSpec(sizes["max_model_bytes"], sizes["ensemble_bytes"] or d.ensemble_bytes, dtype)


def _wandb_spec(raw: Any, check: _Checker) -> WandbSpec:
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


def _sorted_by_conditions(params: list[Parameter], check: _Checker) -> list[Parameter]:
    """Order parameters so that every condition is sampled before what depends on it."""
    names = [p.name for p in params]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    for name in duplicates:
        check.errors.append(f"{name}: defined twice ({', '.join(p.path for p in params if p.name == name)})")
    by_name = {p.name: p for p in params}
    for p in params:
        for cond, allowed in p.when:
            if cond not in by_name:
                check.errors.append(f"{p.path}.when: condition on a missing parameter {cond!r}")
                continue
            possible = by_name[cond].possible_values() if by_name[cond].distribution is None or \
                by_name[cond].distribution.kind == "choice" else None
            if possible is not None and not set(allowed) & set(possible):
                check.errors.append(f"{p.path}.when: {cond} never takes {list(allowed)} (possible: {possible})")
    ordered: list[Parameter] = []
    placed: set[str] = set()
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(c in placed or c not in by_name for c, _ in p.when)]
        if not ready:
            check.errors.append("conditions form a cycle: " + ", ".join(p.path for p in pending))
            return ordered + pending
        for p in ready:
            ordered.append(p)
            placed.add(p.name)
            pending.remove(p)
    return ordered


def _check_families(family: Parameter, check: _Checker) -> None:
    from yt8m_search import models

    known = models.list_models()
    for f in family.possible_values():
        if f not in known:
            check.errors.append(f"{family.path}: unknown model {f!r} (valid: {', '.join(known)})")


def _check_models(params: list[Parameter], budget: BudgetSpec, check: _Checker) -> None:
    """Hyperparameter names against each family's vocabulary, and the per-model budget."""
    from yt8m_search import models  # torch: imported only once the file itself is well-formed

    families = list(params[0].possible_values())
    for p in params:
        if p.section != "hparams":
            continue
        applies = [f for f in families if all(f in allowed for c, allowed in p.when if c == "family")]
        for f in applies:
            vocabulary = models.hyperparameters(f)
            if p.name not in vocabulary:
                check.errors.append(f"{p.path}: not a hyperparameter of {f} (valid: {', '.join(vocabulary)}); "
                                    "restrict it with when: {family: ...}")
    if check.errors or not families:
        return
    smallest, checked, valid = smallest_config(params, budget.storage_dtype)
    if valid == 0:
        check.errors.append(f"model: none of the {checked} configurations checked is a valid model "
                            f"(e.g. {smallest[1]})")
    elif budget.max_model_bytes is not None and smallest[0] > budget.max_model_bytes:
        check.errors.append(
            f"budget.max_model_bytes: {budget.max_model_bytes:,} bytes is below every configuration "
            f"({checked} checked); the smallest needs {smallest[0]:,} bytes at {budget.storage_dtype}: {smallest[1]}"
        )


def configurations(params: Sequence[Parameter], limit: int = 20_000, seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Model configurations to check (every choice, a grid over ranges; sampled past ``limit``)."""
    import itertools
    import random

    model_params = [p for p in params if p.section in ("model", "hparams")]
    spaces = [p.possible_values() for p in model_params]
    total = 1
    for values in spaces:
        total *= len(values)
    rng = random.Random(seed)
    combos = itertools.product(*spaces) if total <= limit else (
        tuple(rng.choice(v) for v in spaces) for _ in range(limit)
    )
    out = []
    for combo in combos:
        values: dict[str, Any] = {}
        for p, v in zip(model_params, combo):
            if p.active(values):
                values[p.name] = v
        out.append(values)
    return out, min(total, limit)


def smallest_config(params: list[Parameter], dtype: str) -> tuple[tuple[float, str], int, int]:
    from yt8m_search import models

    smallest: tuple[float, str] = (float("inf"), "")
    valid = 0
    configs, checked = configurations(params)
    for values in configs:
        hparams = {k: v for k, v in values.items() if k != "family"}
        try:
            size = models.size_bytes(values["family"], dtype=dtype, **hparams)
        except ValueError as err:
            if not smallest[1]:
                smallest = (float("inf"), f"{values['family']}{hparams}: {err}")
            continue
        valid += 1
        if size < smallest[0]:
            smallest = (size, f"{values['family']} {hparams}")
    return smallest, checked, valid


def parse(raw: Any, source: str = "", name: str = "space") -> Spec:
    check = _Checker()
    top = check.mapping(raw, "", _SECTIONS)
    data = _data_spec(top.get("data"), check)
    model_params = _model_parameters(top.get("model"), check)
    trial, trial_params = _trial_parameters(top.get("trial"), check)
    search = _search_spec(top.get("search"), check, trial.get("epochs", 1))
    budget = _budget_spec(top.get("budget"), check)
    storage = check.string(top, "storage", "storage", "runs") or "runs"
    wandb = _wandb_spec(top.get("wandb"), check)
    params = _sorted_by_conditions(model_params + trial_params, check)
    _check_families(model_params[0], check)
    if not check.errors:
        _check_models(params, budget, check)
    if check.errors:
        raise SpecError(check.errors, source)
    return Spec(
        data=data,
        parameters=tuple(params),
        trial=trial,
        search=search,
        budget=budget,
        storage=storage,
        wandb=wandb,
        name=name,
        source=source,
        raw=top,
    )


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
