"""NeXtVLAD's reverse whitening: the layer, its analytic size, and the two ways it gets its values.

Models take values, never paths. A model built with ``reverse_whitening=True`` holds a
``ReverseWhitening`` layer whose ``scale`` buffer starts as a neutral placeholder; the real values
arrive either from the eigenvalue file, read once by the driver (``load_eigenvals``) and copied into
every worker's model (``set_eigenvalues``), or from a state dict (a checkpoint or a bundle carries
the buffer), so loading a trained model never needs the file.

Old configurations named the file in the hyperparameters (``pca_eigenvals: path | None``);
``upgrade_pca_eigenvals`` translates them (registered with both NeXtVLAD families, see
``registry.upgrade_hparams``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from yt8m_search.constants import RGB_DIM
from yt8m_search.models.layers import Count

# The placeholder behaves as PCA eigenvalues of 1 (scale sqrt(1) + 1e-4): a scale the real formula
# can produce, finite and of the right shape and dtype, so a model without its eigenvalues still runs
# (smoke tests) and a state dict with the real buffer loads over it.
PLACEHOLDER_EIGENVALUE = 1.0


def whitening_scale(eigenvalues: np.ndarray) -> Tensor:
    """The rgb scale sqrt(e_j) + 1e-4 of the first 1024 eigenvalues, float32 [1024]."""
    values = np.asarray(eigenvalues, dtype=np.float32).reshape(-1)[:RGB_DIM]
    return torch.from_numpy(np.sqrt(values).astype(np.float32) + 1e-4)


def check_eigenvalues(eigenvalues: np.ndarray, source: str) -> np.ndarray:
    """The first 1024 values as float32, or ValueError naming ``source`` (a path or a description)."""
    values = np.asarray(eigenvalues, dtype=np.float32).reshape(-1)
    head = values[:RGB_DIM]
    if values.size < RGB_DIM or not np.all(np.isfinite(head)) or np.any(head < 0):
        raise ValueError(
            f"pca_eigenvals: {source} must hold >= {RGB_DIM} finite non-negative values, got {values.size}"
        )
    return values[:RGB_DIM]


def load_eigenvals(path: str | Path | BinaryIO, *, name: str | None = None) -> np.ndarray:
    """The YouTube-8M PCA eigenvalues of a .npy file (shape (2048, 1) or (N,)): the 1024 that scale rgb.

    ``path`` may be an open binary file (the trainer reads s3:// through its storage layer); ``name``
    is then where it came from. Raises ValueError naming it when the file cannot be read or holds
    unusable values.
    """
    where = name or str(path)
    try:
        values = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"pca_eigenvals: cannot read eigenvalues from {where}: {err}") from err
    return check_eigenvalues(values, where)


class ReverseWhitening(nn.Module):
    """NeXtVLAD's input transform: undo the PCA whitening of rgb, leave audio as dequantized.

    rgb_j <- (x_j - 4/512) * (sqrt(e_j) + 1e-4); the 4/512 removes the dequantizer's half-bucket bias
    (train.py/eval.py of linrongc/youtube-8m). Padded (all-zero) frames are left at zero rather than
    mapped to the constant -(4/512)(sqrt(e)+1e-4): the mask, not the value, marks padding here.
    """

    def __init__(self) -> None:
        super().__init__()
        placeholder = np.full(RGB_DIM, PLACEHOLDER_EIGENVALUE, np.float32)
        self.register_buffer("scale", whitening_scale(placeholder))  # [1024], stored: a bundle needs no file

    def set_eigenvalues(self, eigenvalues: np.ndarray) -> None:
        """Fill ``scale`` from the PCA eigenvalues (in place: device and dtype of the buffer are kept)."""
        values = check_eigenvalues(eigenvalues, "the eigenvalues")
        with torch.no_grad():
            self.scale.copy_(whitening_scale(values))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        rgb = (x[..., :RGB_DIM] - (4.0 / 512.0)) * self.scale
        if mask is not None:
            rgb = rgb * mask[..., None].to(rgb.dtype)
        return torch.cat([rgb, x[..., RGB_DIM:]], dim=-1)


def reverse_whitening_params(enabled: bool) -> Count:
    return Count(0, RGB_DIM if enabled else 0)


def set_eigenvalues(model: nn.Module, eigenvalues: np.ndarray) -> None:
    """Fill the reverse-whitening buffer of ``model`` (one per model: a mixture shares its own).

    Raises ValueError naming the model when it was built without reverse whitening.
    """
    layers = [m for m in model.modules() if isinstance(m, ReverseWhitening)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no reverse whitening to set eigenvalues on "
            "(build it with reverse_whitening=True)"
        )
    for layer in layers:
        layer.set_eigenvalues(eigenvalues)


def upgrade_pca_eigenvals(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Old vocabulary -> new: ``pca_eigenvals`` (a path or None) becomes ``reverse_whitening`` (bool).

    The path itself is dropped: the values are in the old model's state dict (``whitening.scale``).
    """
    upgraded = dict(hparams)
    if "pca_eigenvals" in upgraded:
        path = upgraded.pop("pca_eigenvals")
        upgraded.setdefault("reverse_whitening", path is not None)
    return upgraded
