"""diffusability: a benchmark of which latent-space properties make diffusion models generate well.

The package is organised by stage (``data``, ``tokenizers``, ``diffusion``, ``sampling``,
``evaluation``, ``metrics``, ``analysis``); ``cli`` exposes one subcommand per workflow rule.
``metrics`` and ``evaluation`` are pure functions on tensors and never open a file.
"""

__version__ = "0.1.0"
