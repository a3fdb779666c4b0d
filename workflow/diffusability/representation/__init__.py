"""The representation stage: FDr, the Fréchet distance of samples in representation spaces (DINOv2, MAE, …).

``spaces`` holds the spaces, their local models and feature extraction; ``commands`` the
``representation-stats`` and ``representation-metrics`` commands of ``workflow/rules/representation.smk``
(no jobs unless ``generation.representations`` is set).
"""
