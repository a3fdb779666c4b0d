"""The teacher stage: the small domain classifier trained on the study's own images.

``domain_net`` holds the network, its training loop and its directory format; ``commands`` the
``train-teacher`` command of ``workflow/rules/teacher.smk``. The trained network is the feature
network of FD/IS on the embedded default (``generation.feature_network: domain``) and of rFD, and
the stand-in teacher of the tokenizer regularizers when no VFM is configured.
"""
