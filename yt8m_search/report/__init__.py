"""A sweep's report: one self-contained HTML page (inline CSS and SVG, no scripts, no external assets).

``render_report(rows, summary, importances)`` builds the page from the trials table (``results.TrialRow``
records, as ``search.run_sweep`` returns them), the run summary (``results.RunSummary``) and the
parameter importances; ``write_report`` stores it as ``<run_dir>/report.html``. The page opens offline
in any browser: the plots are plain SVG drawn here (hover a point for its trial's details through the
SVG ``<title>``), every text is escaped.

Plots: the optimisation history (GAP of each trained trial in creation order, running best as a step
line); GAP against stored size (log x, MB) and against forward GFLOPs per video (log x), each with
the Pareto front of fully trained trials in (GAP, that cost), the per-model budget and the infeasible
trials marked along the x axis; parameter importance; the ensemble's GAP as members are added, when
the run built one. Then the trials table, best GAP first, untrained trials last, with each trial's
GFLOPs and measured latency (ms per video) side by side and its configuration (and why it did not
train) on a line under them; its "Pareto" notes mark the search's own front (GAP against the costs of
``search.objectives``, stored size when it has none). Past 40 trials the table shows the top 25 (and
always the best trial) and folds the rest into a ``<details>`` below it; a plot of more than 64
points draws smaller dots.

Modules: ``svg`` (formatting, scales, ticks, the chart primitive), ``plots`` (the plots),
``page`` (the tables and the page).
"""

from __future__ import annotations

from yt8m_search.report.page import render_report, write_report
from yt8m_search.report.plots import pareto_ids

__all__ = ["pareto_ids", "render_report", "write_report"]
