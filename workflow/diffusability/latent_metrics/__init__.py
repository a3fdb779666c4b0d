"""The latent-metrics stage: the proxy metrics of each tokenizer, wired to the workflow's files.

``commands`` holds ``latent-metrics`` (the registry's metrics on a tokenizer's normalised val latents)
and ``metrics`` (the same on any latent file, for users); ``network_commands`` holds
``tokenizer-metrics`` and ``model-metrics`` (the proxies that need the tokenizer's encoder/decoder or a
trained diffusion model); ``inputs`` checks a user's latent arrays. The metrics themselves are pure
functions in :mod:`diffusability.metrics`. Rules: ``workflow/rules/latent_metrics.smk``.
"""
