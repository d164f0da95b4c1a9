"""Private framework names live in yt8m_search.compat only, and still exist in the installed versions."""

from __future__ import annotations

import re
from pathlib import Path

from yt8m_search import compat

PACKAGE = Path(__file__).resolve().parents[1] / "yt8m_search"


def test_every_private_name_still_exists() -> None:
    missing = compat.missing_private_names()
    assert not missing, "an upgrade removed private names yt8m_search relies on:\n" + "\n".join(missing)


def test_private_names_appear_only_in_compat() -> None:
    # plus the private attributes the project stopped using (study._storage, searcher._sampler)
    names = sorted({path.rsplit(".", 1)[-1] for _, path in compat.PRIVATE_NAMES} | {"_storage", "_sampler"})
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
    sites = [f"{path.relative_to(PACKAGE.parent)}:{i}" for path in PACKAGE.rglob("*.py") if path.name != "compat.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert sites == []


def test_a_removed_name_is_reported_in_words(monkeypatch) -> None:
    monkeypatch.setattr(compat, "PRIVATE_NAMES", (*compat.PRIVATE_NAMES, ("torch", "_no_such_kernel")))
    missing = compat.missing_private_names()
    assert len(missing) == 1 and missing[0].startswith("torch._no_such_kernel is gone") and "compat" in missing[0]


def test_foreach_norm_matches_the_plain_norms() -> None:
    import torch

    tensors = [torch.arange(6.0).reshape(2, 3), torch.ones(4)]
    assert [float(n) for n in compat.foreach_norm(tensors)] == [float(t.norm()) for t in tensors]
    compat.foreach_mul_(tensors, [torch.tensor(2.0), torch.tensor(0.5)])
    assert tensors[1].tolist() == [0.5] * 4
