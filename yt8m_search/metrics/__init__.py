"""YouTube-8M evaluation metrics: GAP@k, Hit@1, PERR and the sparse mAP of the starter's ``eval.py``.

NumPy only. Every metric reproduces the official starter code (google/youtube-8m ``eval_util.py``,
``average_precision_calculator.py``, ``mean_average_precision_calculator.py``) to floating-point
round-off (|diff| < 1e-12 in practice, 1e-9 is tested), on any finite input, *including exact ties*:

Top-k selection (``top_k_by_class``)
    Per video the starter keeps ``np.argpartition(row, -k)[-k:]`` with ``k = min(top_k, C)``. The set of
    kept classes is unique unless the k-th largest score is tied with a score outside the top k; for such
    rows (and rows with more than 256 scores above our bound) we call exactly that 1-D
    ``np.argpartition`` on the row, so the kept classes are the starter's. All other rows go through a
    vectorized bound-and-filter (the k-th largest of 128 interleaved column-group maxima bounds the k-th
    largest score from below; only the ~k entries above it are gathered and sorted); float32 inputs are
    never upcast before the selection.

Pooled-list order and tie-breaking (``AveragePrecisionCalculator``, ``top_n=None``)
    The starter pushes the (score, label) tuples of a batch class-major (class 0's entries in video
    order, then class 1's, ...; ``flatten(top_k_by_class(...))``) onto a ``heapq`` heap that persists
    across batches, then in ``ap_at_n`` reads the heap *array*, permutes it with
    ``random.seed(0); random.sample(range(N), N)`` (Python's Mersenne Twister, ``_randbelow`` rejection
    sampling and the pool-swap algorithm of ``random.sample``), and stable-sorts it by score descending
    (``sorted(..., reverse=True)``). Exact ties are therefore broken by the shuffled heap position. We keep
    the pooled entries in the same push order; when no tie group mixes positive and negative entries the
    order inside tie groups cannot change the AP and a plain sort is used; otherwise the heap array is
    rebuilt by replaying the pushes with integer keys that order exactly like the (score, label) tuples,
    and the ``random.sample`` permutation is regenerated in vectorized NumPy from the same MT19937 stream
    (checked against ``random.sample`` in the tests). The per-class calculators of the sparse mAP are
    treated the same way (their own heaps, fed in video order batch after batch, each shuffled with seed 0).

Hit@1 (``calculate_hit_at_one``)
    ``labels[v, argmax(pred[v])]`` with the first index on ties; unlabeled videos count as 0.

PERR (``calculate_precision_at_equal_recall_rate``)
    ``m = int(sum(labels[v]))``; the top m are ``np.argpartition(row, -m)[-m:]`` (the same call is made
    whenever the m-th score is tied with the (m+1)-th); only strictly positive scores count. For m = 0 the
    starter's ``[-0:]`` slice keeps all C classes, so an unlabeled video contributes 0 and is not skipped.

Sparse mAP (``EvaluationMetrics.map_calculator``, ``filter_empty_classes=True``)
    Per class, AP over the (video, class) entries that reached some video's top k, denominator = all
    positives of the class in the labels; classes without positives are dropped; mAP = mean of the rest
    (a class with positives but no top-k entry has AP 0). NaN when no class has a positive.

Differences that remain: arithmetic is float64 throughout (the starter computes in float32 when it is
fed float32 label matrices under NumPy >= 2, about 4e-6 off); summation order of the AP terms may differ
by round-off; NaN scores are rejected (ValueError). Labels may be dense ``[V, C]`` arrays (bool, int or
float; values are used as given, ``> 0`` is positive; pass an array or tensor, not nested lists) or a
sequence of V class-id arrays (set semantics). Pure Python/NumPy: ``random`` must be CPython's (3.11+).

API: :func:`gap`, :func:`hit_at_one`, :func:`perr`, :func:`mean_average_precision` (one call on
``[V, C]``), :class:`MetricAccumulator` (streaming, ``state()`` / ``from_states`` / ``merge`` for
distributed evaluation), :func:`shuffle_permutation` (the starter's seed-0 shuffle).

Modules, bottom up: ``labels`` (the two label layouts, input checks), ``topk`` (per-row top-k, argmax,
PERR), ``permutation`` (the seed-0 shuffle), ``ranking`` (AP over pooled entries, ties as the
starter), ``accumulator`` (``MetricAccumulator``), ``functions`` (the one-call metrics).
"""

from yt8m_search.metrics.accumulator import MetricAccumulator
from yt8m_search.metrics.functions import gap, hit_at_one, mean_average_precision, perr
from yt8m_search.metrics.permutation import shuffle_permutation

__all__ = [
    "MetricAccumulator",
    "gap",
    "hit_at_one",
    "mean_average_precision",
    "perr",
    "shuffle_permutation",
]
