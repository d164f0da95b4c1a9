"""The model zoo: ``build(name, **hparams)``, ``param_count``, ``size_bytes``, ``flops``, ``list_models``.

Importing this package registers every family (one module each). Models take values, never paths:
NeXtVLAD's reverse whitening is a flag, and its eigenvalues are read by the caller
(``load_eigenvals``) and copied into a built model (``set_eigenvalues``).
"""

from yt8m_search.models import (  # noqa: F401  (registration)
    frame_logistic,
    gru,
    mix_nextvlad,
    netvlad,
    nextvlad,
    nonlocal_netvlad,
)
from yt8m_search.models.layers import Count, folded_statistics, module_count
from yt8m_search.models.registry import (
    STORAGE_DTYPES,
    MixtureOutput,
    ModelOutput,
    VideoModel,
    build,
    count,
    flops,
    get_spec,
    hyperparameters,
    list_models,
    param_count,
    recipe_defaults,
    resolve,
    size_bytes,
    storage_itemsize,
    tiny_hparams,
    upgrade_hparams,
)
from yt8m_search.models.whitening import load_eigenvals, set_eigenvalues

__all__ = [
    "STORAGE_DTYPES",
    "Count",
    "MixtureOutput",
    "ModelOutput",
    "VideoModel",
    "build",
    "count",
    "flops",
    "get_spec",
    "hyperparameters",
    "list_models",
    "load_eigenvals",
    "folded_statistics",
    "module_count",
    "param_count",
    "recipe_defaults",
    "resolve",
    "set_eigenvalues",
    "size_bytes",
    "storage_itemsize",
    "tiny_hparams",
    "upgrade_hparams",
]
