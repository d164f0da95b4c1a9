"""The model registry: names -> typed builder functions and their analytic size and cost.

A family registers a *builder*, a function of keyword-only typed hyperparameters returning a
``VideoModel``, together with a *counter* taking the same keywords and returning the analytic
``Count`` without building anything, and a *FLOP counter* (same keywords) returning the forward
FLOPs of one video of 300 frames. The search's vocabulary is the builders' keyword names;
``build`` / ``param_count`` / ``size_bytes`` / ``flops`` check names, fill defaults and check types,
and report every problem at once.

Each family also registers a *tiny* configuration (``tiny_hparams``: a few clusters, hidden units
and classes, so the generic tests can build and train every family in milliseconds) and, when its
vocabulary changed, an *upgrade* that translates old hyperparameter dicts (``upgrade_hparams``, for
loaders of old checkpoints and bundles).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Union

import torch
from torch import Tensor, nn

from yt8m_search.models.layers import Count, bce_loss

STORAGE_DTYPES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}


class MixtureOutput(NamedTuple):
    """What a mixture model's forward returns: the mixed logits and what its loss needs."""

    logits: Tensor  # [B, C] mixture logits z_e, the prediction
    branch_logits: Tensor  # [M, B, C] logits z_m of every branch


ModelOutput = Tensor | MixtureOutput


class VideoModel(nn.Module):
    """What every registered model is: ``forward(features [B, T, 1152], mask [B, T] bool)``.

    The forward output is logits [B, C] or a ``MixtureOutput``; ``logits(output)`` extracts the
    prediction, ``loss(output, labels)`` is the family's training loss (labels multi-hot [B, C]),
    and ``l2_parameters()`` are the tensors the recipe's L2 penalty applies to (the classifier).
    """

    classifier: nn.Module

    def loss(self, output: ModelOutput, labels: Tensor) -> Tensor:
        return bce_loss(self.logits(output), labels)

    @staticmethod
    def logits(output: ModelOutput) -> Tensor:
        return output.logits if isinstance(output, MixtureOutput) else output

    def l2_parameters(self) -> list[nn.Parameter]:
        return self.classifier.l2_parameters()  # type: ignore[operator]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., VideoModel]
    counter: Callable[..., Count]
    flops: Callable[..., int]
    defaults: Mapping[str, Any]
    types: Mapping[str, Any]
    doc: str
    tiny: Mapping[str, Any]
    upgrade: Callable[[Mapping[str, Any]], dict[str, Any]] | None
    recipe: Mapping[str, Any] = field(default_factory=dict)  # the family's training-recipe defaults


_REGISTRY: dict[str, ModelSpec] = {}


def _check_takes_hparams(name: str, what: str, fn: Callable[..., Any], params: Mapping[str, Any]) -> None:
    """A counter takes ``**hparams`` or exactly the builder's keywords (the signature is the one source)."""
    fn_params = list(inspect.signature(fn).parameters.values())
    takes_all = len(fn_params) == 1 and fn_params[0].kind is inspect.Parameter.VAR_KEYWORD
    if not takes_all and [p.name for p in fn_params] != list(params):
        raise TypeError(f"{name}: the {what} takes **hparams or exactly the builder's keywords")


def register(
    name: str,
    counter: Callable[..., Count],
    *,
    flops: Callable[..., int],
    tiny: Mapping[str, Any],
    upgrade: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    recipe: Mapping[str, Any] = MappingProxyType({}),
) -> Callable[[Callable[..., VideoModel]], Callable[..., VideoModel]]:
    """Decorator: register ``builder`` under ``name``.

    ``counter`` receives the complete, checked hyperparameters as keywords (declare it with
    ``**hparams``: the builder's signature is the one source of names, types and defaults).
    ``flops``: the same for the forward FLOPs of one 300-frame video (``flops`` below).
    ``tiny``: hyperparameters of a tiny, fast model of the family (checked against the signature).
    ``upgrade``: translates an old hyperparameter dict to the builder's vocabulary.
    ``recipe``: the family's own training-recipe defaults, by trial-setting name (``batch_size``,
    ``l2``, ``lr_decay``...; the names are ``config.TrialSettings``', checked by the tests: models do
    not import config). A space's explicit value beats them; they beat ``TrialSettings``' defaults.
    """

    def decorate(builder: Callable[..., VideoModel]) -> Callable[..., VideoModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(builder).parameters
        keyword_only = (p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
        if not all(keyword_only) or any(p.default is inspect.Parameter.empty for p in params.values()):
            raise TypeError(f"{name}: a builder takes keyword-only hyperparameters, each with a default")
        _check_takes_hparams(name, "counter", counter, params)
        _check_takes_hparams(name, "FLOP counter", flops, params)
        hints = typing.get_type_hints(builder)
        spec = ModelSpec(
            name=name,
            builder=builder,
            counter=counter,
            flops=flops,
            defaults={k: p.default for k, p in params.items()},
            types={k: hints[k] for k in params},
            doc=inspect.getdoc(builder) or "",
            tiny=dict(tiny),
            upgrade=upgrade,
            recipe=MappingProxyType(dict(recipe)),
        )
        errors = _hparam_errors(spec, spec.tiny)
        if errors:
            raise TypeError(f"{name}: tiny hyperparameters: " + "; ".join(errors))
        _REGISTRY[name] = spec
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}") from None


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyperparameter names of ``name`` with their defaults."""
    return dict(get_spec(name).defaults)


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _hparam_errors(spec: ModelSpec, hparams: Mapping[str, Any]) -> list[str]:
    errors = []
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        errors.append(
            f"unknown hyperparameter(s) {', '.join(unknown)}; valid for {spec.name}: {', '.join(spec.defaults)}"
        )
    for key, value in hparams.items():
        if key in spec.types and not _type_ok(value, spec.types[key]):
            errors.append(f"{key}={value!r} is not of type {spec.types[key]}")
    return errors


def resolve(name: str, **hparams: Any) -> dict[str, Any]:
    """Check names and types against the builder's signature; return the complete hyperparameters."""
    spec = get_spec(name)
    errors = _hparam_errors(spec, hparams)
    if errors:
        raise ValueError(f"model {name!r}: " + "; ".join(errors))
    return {**spec.defaults, **hparams}


def tiny_hparams(name: str) -> dict[str, Any]:
    """The hyperparameters of a tiny, fast model of the family ``name`` (for tests and smoke runs)."""
    return dict(get_spec(name).tiny)


def recipe_defaults(name: str) -> dict[str, Any]:
    """The training-recipe defaults registered with the family ``name`` (trial-setting name -> value;
    empty: the ``TrialSettings`` defaults, i.e. the NeXtVLAD recipe)."""
    return dict(get_spec(name).recipe)


def upgrade_hparams(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` written for an older vocabulary of ``name``, translated to the current one.

    For example NeXtVLAD's ``pca_eigenvals`` (a path, or None) becomes ``reverse_whitening`` (True,
    or False). Current dicts come back unchanged (a copy); names are not checked here (``build`` does).
    """
    upgrade = get_spec(name).upgrade
    return upgrade(hparams) if upgrade is not None else dict(hparams)


def build(name: str, **hparams: Any) -> VideoModel:
    """Build a registered model from plain typed hyperparameters (defaults fill the rest)."""
    return get_spec(name).builder(**resolve(name, **hparams))


def count(name: str, **hparams: Any) -> Count:
    """The analytic (parameters, stored statistics) of a model, without building it."""
    return get_spec(name).counter(**resolve(name, **hparams))


def param_count(name: str, **hparams: Any) -> int:
    """Exact number of trainable parameters, computed analytically."""
    return count(name, **hparams).params


def flops(name: str, **hparams: Any) -> int:
    """Forward FLOPs of one video of 300 frames (``constants.MAX_FRAMES``), computed analytically.

    2 per multiply-accumulate of every matmul, batched matmul and recurrent step, exactly as
    ``torch.utils.flop_counter.FlopCounterMode`` counts a CPU forward of a batch of one such video
    (mm, addmm, bmm, baddbmm, convolution); element-wise work (normalisations, activations, batch
    norm, softmax) is not counted. Frame sampling does not apply: evaluation uses every frame.
    """
    return get_spec(name).flops(**resolve(name, **hparams))


def storage_itemsize(dtype: str | torch.dtype) -> int:
    key = str(dtype).removeprefix("torch.")
    if key not in STORAGE_DTYPES:
        raise ValueError(f"storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    return STORAGE_DTYPES[key]


def size_bytes(name: str, dtype: str | torch.dtype = "bfloat16", **hparams: Any) -> int:
    """Stored size of the inference model: parameters plus batch-norm statistics at ``dtype``."""
    c = count(name, **hparams)
    return (c.params + c.stats) * storage_itemsize(dtype)
