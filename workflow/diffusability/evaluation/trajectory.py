"""Transport-efficiency rows of a sample set's recorded trajectories — docs/metrics.md §10.

The maths is :func:`diffusability.metrics.trajectory.trajectory_metrics` (pure, per sample); this
module turns its per-sample values into the study's result rows (:mod:`diffusability.rows`), with the
directions of the metric registry (``TRAJECTORY_METRICS``): ``local_straightness`` and
``global_efficiency`` (means over samples, higher is better) and one ``length_ratio`` row per segment
(the mean ρ_k over samples; a diagnostic, direction "none", params ``segment``, ``t_start``, ``t_end``).
"""

from __future__ import annotations

import torch

from ..metrics.registry import metric_direction
from ..metrics.trajectory import trajectory_metrics
from ..rows import result_row


def trajectory_rows(trajectory: torch.Tensor, times) -> list[dict]:
    """Result rows of recorded sampler trajectories.

    Parameters
    ----------
    trajectory : torch.Tensor, shape (K+1, N, ...)
        Sampler states, index 0 the noise (t_0), index K the data (t_K).
    times : array-like, shape (K+1,)
        Strictly increasing times (t = 0 noise, t = 1 data).

    Returns
    -------
    list of dict
        ``local_straightness``, ``global_efficiency`` and K ``length_ratio`` rows, each with ``n`` = N.
        With K = 1 (one sampler step) local straightness is undefined and its value is NaN.

    Examples
    --------
    One sample that goes right, then up, on a uniform grid:

    >>> import torch
    >>> path = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])      # (K+1, N, D) = (3, 1, 2)
    >>> rows = trajectory_rows(path, torch.tensor([0.0, 0.5, 1.0]))
    >>> [(r["metric"], round(r["value"], 4), r["direction"]) for r in rows]
    [('local_straightness', 0.0, 'higher'), ('global_efficiency', 0.7071, 'higher'),
     ('length_ratio', 1.4142, 'none'), ('length_ratio', 1.4142, 'none')]
    >>> rows[2]["params"]
    '{"segment": 1, "t_end": 0.5, "t_start": 0.0}'
    """
    result = trajectory_metrics(trajectory, times)
    n = int(trajectory.shape[1])
    rows = [result_row(name, float(result[name].double().mean()), metric_direction(name), {}, n)
            for name in ("local_straightness", "global_efficiency")]
    times = torch.as_tensor(times).double().reshape(-1)
    ratio = result["length_ratio"].double().mean(dim=0)                       # (K,): the mean over samples
    for k, value in enumerate(ratio.tolist()):
        segment = {"segment": k + 1, "t_start": float(times[k]), "t_end": float(times[k + 1])}
        rows.append(result_row("length_ratio", value, metric_direction("length_ratio"), segment, n))
    return rows
