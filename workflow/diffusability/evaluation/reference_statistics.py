"""Reference statistics of the generation metrics: reading a statistics ``.npz`` and checking its arrays.

The reference is the val split's feature statistics (``reference-stats``) or ADM's
``VIRTUAL_imagenet256_labeled.npz`` (docs/models.md §3); a wrong file ends the command naming it.
"""

from __future__ import annotations

from pathlib import Path


def read_reference_statistics(path) -> dict:
    """mu, sigma and, when present, mu_s, sigma_s, features, n, image_size of a statistics .npz.

    Reads only those arrays (an ADM reference batch also holds 10 000 images under arr_0).
    """
    import numpy as np

    from ..errors import require

    path = Path(path)
    require(path.is_file(), f"{path}: reference statistics not found")
    require(path.suffix == ".npz", f"{path}: expected reference statistics as .npz (mu, sigma[, mu_s, sigma_s])")
    from ..io import reading
    with reading(path, ".npz file"), np.load(path, allow_pickle=False) as data:
        require({"mu", "sigma"} <= set(data.files), f"{path}: expected arrays mu and sigma, found {sorted(data.files)}")
        wanted = ("mu", "sigma", "mu_s", "sigma_s", "features", "n", "image_size")
        return {key: data[key] for key in wanted if key in data.files}


def check_reference_statistics(stats: dict, path, dim: int | None = None) -> None:
    """mu (F,) and sigma (F, F) (and mu_s, sigma_s when present) numeric and finite, F = ``dim`` when given:
    a wrong statistics file ends the command naming it, not with a Fréchet error about "the second Gaussian"."""
    import numpy as np

    from ..errors import require

    for mean, cov in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if mean not in stats:  # mu and sigma are checked present by the readers; mu_s, sigma_s are optional
            continue
        mu, sigma = np.asarray(stats[mean]), np.asarray(stats.get(cov))
        require(np.issubdtype(mu.dtype, np.number) and np.issubdtype(sigma.dtype, np.number),
                f"{path}: {mean} and {cov} must be numeric, got {mu.dtype} and {sigma.dtype}")
        require(mu.ndim == 1 and sigma.shape == (len(mu), len(mu)),
                f"{path}: {mean} must be (F,) and {cov} (F, F), got {mu.shape} and {sigma.shape}")
        require(bool(np.isfinite(mu).all() and np.isfinite(sigma).all()), f"{path}: {mean}/{cov} contain NaN or Inf")
    if dim is not None:
        require(len(stats["mu"]) == dim, f"{path}: mu has {len(stats['mu'])} dimensions, the feature net gives {dim}")
