"""The starter's seed-0 shuffle, ``random.seed(0); random.sample(range(n), n)``, regenerated in NumPy.

``ap_at_n`` shuffles the pooled heap array with it before its stable sort, so exact score ties are
broken by shuffled heap position (see the package docstring). Small n use Python's ``random`` itself;
large n replay the same MT19937 stream vectorized (``_randbelow`` rejection sampling, then the
pool-swap algorithm of ``random.sample``), checked against ``random.sample`` in the tests.
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np


def _mt_seed0() -> np.random.MT19937:
    """A NumPy MT19937 in the state of ``random.seed(0)`` (same 32-bit output stream)."""
    state = random.Random(0).getstate()[1]
    gen = np.random.MT19937()
    gen.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": int(state[624])},
    }
    return gen


def randbelow_sequence(n: int) -> np.ndarray:
    """``[_randbelow(n - i) for i in range(n)]`` of ``random.Random(0)``, vectorized.

    ``_randbelow(m)`` draws ``getrandbits(m.bit_length())`` (one 32-bit word shifted right) until the
    value is < m. Draws are consumed in chunks: a draw is surely accepted when it is below m minus the
    number of draws before it in the chunk, surely rejected when >= m; the first undecided draw ends
    the chunk and is decided exactly.
    """
    gen = _mt_seed0()
    buf = gen.random_raw(n + n // 2 + 64).astype(np.int64)
    p = 0
    out = np.empty(n, np.int64)
    i = 0
    while i < n:
        m = n - i
        bits = m.bit_length()
        low = 1 << (bits - 1)
        size = min(m - low + 1, max(8, int((1 << bits) ** 0.5)))
        if p + size > buf.size:
            more = gen.random_raw(max(size, n // 4 + 64)).astype(np.int64)
            buf = np.concatenate([buf[p:], more])
            p = 0
        draws = buf[p : p + size] >> (32 - bits)
        sure_accept = draws < m - np.arange(size)
        undecided = ~sure_accept & (draws < m)
        first = int(undecided.argmax()) if undecided.any() else size
        accepted = draws[:first][sure_accept[:first]]
        out[i : i + accepted.size] = accepted
        i += accepted.size
        p += first
        if first < size:
            if draws[first] < n - i:
                out[i] = draws[first]
                i += 1
            p += 1
    return out


def permutation_from_draws(js: np.ndarray) -> np.ndarray:
    """``random.sample``'s pool algorithm for ``range(n)`` given its draws, vectorized.

    Step i picks ``result[i] = pool[j_i]`` and moves ``pool[n-1-i]`` into slot ``j_i``. The value in a
    slot is the one written by the latest earlier step that picked that slot (or the slot's own index);
    the value written at step i is the content of slot ``n-1-i`` at that time, which resolves along a
    chain of earlier steps (pointer jumping).
    """
    n = js.size
    idx = np.arange(n, dtype=np.int64)
    order = np.argsort(js, kind="stable")
    sj = js[order]
    same_as_prev = np.zeros(n, bool)
    same_as_prev[1:] = sj[1:] == sj[:-1]
    prev_same = np.full(n, -1, np.int64)  # latest earlier step with the same draw
    prev_same[order[1:]] = np.where(same_as_prev[1:], order[:-1], -1)
    is_last = np.ones(n, bool)
    is_last[:-1] = sj[:-1] != sj[1:]
    last = np.full(n, -1, np.int64)  # latest step drawing value x (all such steps are <= n-1-x)
    last[sj[is_last]] = order[is_last]
    second = np.full(n, -1, np.int64)
    ends = np.flatnonzero(is_last)
    two = same_as_prev[ends]
    second[sj[ends[two]]] = order[ends[two] - 1]
    tail = n - 1 - idx
    writer = last[tail]
    writer = np.where(writer == idx, second[tail], writer)  # a step does not write before itself
    root = np.where(writer >= 0, writer, idx)
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    content = n - 1 - root
    return np.where(prev_same >= 0, content[np.maximum(prev_same, 0)], js)


def _make_permutation(n: int) -> np.ndarray:
    if n <= 4096 or n >= 1 << 31:  # small: Python is faster; >= 2**31: getrandbits(> 32 bits)
        perm = np.array(random.Random(0).sample(range(n), n), dtype=np.int64)
    else:
        perm = permutation_from_draws(randbelow_sequence(n))
    perm.setflags(write=False)
    return perm


_small_permutation = lru_cache(maxsize=4096)(_make_permutation)
_large_permutation = lru_cache(maxsize=2)(_make_permutation)


def shuffle_permutation(n: int) -> np.ndarray:
    """``random.seed(0); random.sample(range(n), n)`` as an int64 array ``[n]`` (read-only, cached)."""
    n = int(n)
    if n < 0:
        raise ValueError("n must be >= 0")
    return _small_permutation(n) if n <= 1 << 16 else _large_permutation(n)
