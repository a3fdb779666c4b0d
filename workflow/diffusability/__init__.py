"""diffusability: a benchmark of which latent-space properties make diffusion models generate well.

The package is organised by stage, one package per rule file of ``workflow/rules/`` (``data``,
``teacher``, ``tokenizers``, ``reconstruction``, ``latents``, ``latent_metrics``, ``diffusion``,
``sampling``, ``evaluation``, ``representation``, ``analysis``); ``workflow`` holds the artifact layout
and the per-job specs; ``cli`` exposes one subcommand per workflow rule. ``metrics`` holds pure
functions on tensors and never opens a file (docs/architecture.md §2, §4).
"""

__version__ = "0.1.0"
