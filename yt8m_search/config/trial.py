"""A trial's settings: the one definition of every setting's name, type, default, rule and whether
the search may sample it.

The space parser reads the ``trial:`` section into a ``TrialSettings`` (searched values stay
``Parameter``s of section ``trial``), the search fills in a trial's sampled values with
``settings.replace(**values)``, and the trainer's ``TrainConfig`` extends this class with the model;
so a default or a rule changes in one place for all three. Every rule lives in ``problems``, which
names the setting each problem is about: the parser reports ``trial.<key>: ...``, the trainer
``<key> ...``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from yt8m_search.config.checker import number
from yt8m_search.constants import MAX_FRAMES, PLACEMENT_STRATEGIES


@dataclass(frozen=True)
class Rule:
    """The type and the bounds of one setting (field metadata ``"rule"``)."""

    kind: str  # "int" | "float" | "choice"
    minimum: float | None = None  # value >= minimum
    above: float | None = None  # value > above
    maximum: float | None = None  # value <= maximum
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (off / automatic)
    searchable: bool = False  # the search may sample it (the recipe's numbers, not the resources)
    why: str = ""  # said after a bound's message

    def type_problem(self, value: Any) -> str | None:
        """Why ``value`` is not of this setting's type, or None."""
        if value is None:
            return None if self.optional else "expected a value, got null"
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}, got {value!r}"
        n = number(value)
        if n is None:
            return f"expected a number, got {value!r}"
        if self.kind == "int" and not n.is_integer():
            return f"expected an integer, got {value!r}"
        return None

    def coerce(self, value: Any) -> Any:
        """``value`` (of the right type) as this setting's Python type: numeric strings and 3.0 -> 3."""
        if value is None or self.kind == "choice":
            return value
        n = number(value)
        if n is None or (self.kind == "int" and not n.is_integer()):
            return value  # left for type_problem to report
        return int(n) if self.kind == "int" else n

    def bound_problem(self, value: float) -> str | None:
        """Why ``value`` (a number) is out of bounds, or None."""
        low_ok = (self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
        if low_ok and (self.maximum is None or value <= self.maximum):
            return None
        if self.maximum is not None:
            low = f"[{self.minimum:g}" if self.minimum is not None else f"({self.above:g}"
            text = f"must lie in {low}, {self.maximum:g}], got {value:g}"
        elif self.above is not None:
            text = f"must be > {self.above:g}, got {value:g}"
        else:
            text = f"must be >= {self.minimum:g}, got {value:g}"
        return f"{text} ({self.why})" if self.why else text

    def problem(self, value: Any) -> str | None:
        """Type, then bounds."""
        wrong = self.type_problem(value)
        if wrong or value is None or self.kind == "choice":
            return wrong
        return self.bound_problem(float(number(value)))  # type: ignore[arg-type]


def _setting(default: Any, kind: str, **rule: Any) -> Any:
    return field(default=default, metadata={"rule": Rule(kind, **rule)})


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """How one trial trains, besides its model. Defaults are the space file's."""

    epochs: int = _setting(3, "int", minimum=1)
    num_workers: int = _setting(1, "int", minimum=1)  # Ray Train workers (DDP)
    gpus_per_worker: float = _setting(0.0, "float", minimum=0)  # > 0: train on GPUs (bf16 autocast)
    cpus_per_worker: float = _setting(1.0, "float", above=0, why="a trial's resource request must be non-zero")
    batch_size: int = _setting(160, "int", minimum=1)  # global, split evenly over the workers
    eval_batch_size: int = _setting(256, "int", minimum=1)  # per worker
    pad_to: int | None = _setting(None, "int", minimum=1, maximum=MAX_FRAMES, optional=True)  # None: longest video
    shuffle_buffer: int = _setting(2048, "int", minimum=0)  # rows of local shuffle per worker
    keep_checkpoints: int = _setting(2, "int", minimum=1)
    average_last: int = _setting(0, "int", minimum=0)  # >1: also evaluate the mean of the last N epochs' weights
    prediction_top_k: int = _setting(20, "int", minimum=1)  # validation predictions kept per video
    max_failures: int = _setting(2, "int", minimum=0)  # Ray Train restarts after a worker or node is lost
    max_steps_per_epoch: int | None = _setting(None, "int", optional=True)  # for benchmarks and quick checks
    placement_strategy: str = _setting("PACK", "choice", choices=PLACEMENT_STRATEGIES)
    learning_rate: float = _setting(2e-4, "float", above=0, searchable=True)
    lr_decay: float = _setting(0.8, "float", above=0, maximum=1, searchable=True)  # staircase factor
    lr_decay_examples: int = _setting(2_000_000, "int", minimum=1, searchable=True)  # examples per decay step
    l2: float = _setting(1e-5, "float", minimum=0, searchable=True)  # coupled L2 on the classifier's tensors
    clip_norm: float = _setting(1.0, "float", minimum=0, searchable=True)  # per parameter; 0 disables

    def __post_init__(self) -> None:
        # Lossless normalisation only (3.0 -> 3, "5e6" -> 5000000.0): anything else is left for
        # ``problems`` to report, so a parser can build the settings first and list every error after.
        for name, rule in self.rules().items():
            object.__setattr__(self, name, rule.coerce(getattr(self, name)))

    @classmethod
    def rules(cls) -> dict[str, Rule]:
        """Every setting's rule, in declaration order (a subclass's own fields are not settings)."""
        return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls) if "rule" in f.metadata}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.rules())

    @classmethod
    def searchable_names(cls) -> tuple[str, ...]:
        return tuple(name for name, rule in cls.rules().items() if rule.searchable)

    @classmethod
    def value_problem(cls, name: str, value: Any) -> str | None:
        """Why ``value`` cannot be setting ``name`` on its own (type or bounds), or None."""
        return cls.rules()[name].problem(value)

    @classmethod
    def sampled(cls, name: str, value: Any) -> Any:
        """A sampled value as setting ``name`` takes it: a float for an integer setting is truncated."""
        if cls.rules()[name].kind == "int" and isinstance(value, float) and math.isfinite(value):
            return int(value)
        return value

    def problems(self) -> list[tuple[str, str]]:
        """Every problem as (setting, message): each value's own rule, then the rules between settings."""
        found = [(name, p) for name, rule in self.rules().items() if (p := rule.problem(getattr(self, name)))]
        bad = {name for name, _ in found}
        if not {"batch_size", "num_workers"} & bad and self.batch_size % self.num_workers:
            found.append(("batch_size", f"{self.batch_size} is not divisible by num_workers {self.num_workers} "
                                        "(the global batch is split evenly)"))
        if not {"average_last", "epochs"} & bad and self.average_last > self.epochs:
            found.append(("average_last", f"cannot exceed trial.epochs ({self.average_last} > {self.epochs})"))
        return found

    def validate(self) -> list[str]:
        """Every problem, each with its key path in the space file (``trial.<key>: ...``)."""
        return [f"trial.{name}: {message}" for name, message in self.problems()]

    def settings(self) -> TrialSettings:
        """The trial settings alone (of a subclass such as the trainer's config)."""
        return TrialSettings(**{name: getattr(self, name) for name in TrialSettings.names()})

    def replace(self, **values: Any) -> TrialSettings:
        """A copy with ``values`` set, validated (ValueError listing every problem).

        Sampled values arrive as floats where the setting is an integer (a float range over
        ``lr_decay_examples``): those are truncated, as the trainer always did."""
        rules = self.rules()
        unknown = sorted(set(values) - set(rules))
        if unknown:
            raise ValueError(f"unknown trial setting(s) {', '.join(unknown)} (valid: {', '.join(rules)})")
        updated = dataclasses.replace(self, **{name: self.sampled(name, value) for name, value in values.items()})
        errors = updated.validate()
        if errors:
            raise ValueError("invalid trial settings: " + "; ".join(errors))
        return updated


__all__ = ["Rule", "TrialSettings"]
