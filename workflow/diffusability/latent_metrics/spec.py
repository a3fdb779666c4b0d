"""The defaults of the ``tokenizer-metrics`` and ``model-metrics`` specs (the workflow's ``metrics.tokenizer`` and
``metrics.model`` sections): the one table of them, which the schema's ``default:`` values must equal
(tests/test_defaults.py). A missing key takes its value here; an unknown key is refused.
"""

from __future__ import annotations

#: the metric families of ``tokenizer-metrics`` (each an ``enabled`` name and a parameter object)
TOKENIZER_FAMILIES = ("equivariance", "ifid", "fisher_geometry")
#: the feature networks iFID accepts (``ifid.feature_net``)
IFID_FEATURE_NETS = ("inception", "domain")

#: ``tokenizer-metrics``: the families to compute (``enabled``) and each family's parameters
TOKENIZER_METRICS_DEFAULTS = {
    "enabled": [], "batch_size": 64, "seed": 0,
    "equivariance": {"rotations": [1, 2, 3], "scales": [0.5, 0.75], "max_images": None},
    "ifid": {"k": 10, "alpha": 0.5, "pool": "train", "max_pool": None, "max_queries": None, "seed": 0,
             "feature_net": "domain"},
    "fisher_geometry": {"data_grid": None, "sigma_min": 1e-3, "sigma_max": 100.0, "sigma_points": 32,
                        "shrinkage": "ledoit_wolf", "curves": True, "anchors": 256, "neighbors": 8, "rank": 4,
                        "collapse_ratio": 1e-4, "seed": 0},
}

#: ``model-metrics``: the model-based FI/FIR (``enabled: [fisher]``) and its parameters
MODEL_METRICS_DEFAULTS = {
    "enabled": [], "seed": 0,
    "fisher": {"s_min": 1e-3, "s_max": 100.0, "s_points": 32, "probes": 2, "max_samples": 1000, "seed": 0,
               "batch_size": 256},
}
