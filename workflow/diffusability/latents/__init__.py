"""The latents stage: each tokenizer's train/val latents, val masks on the latent grid, channel statistics.

``encode`` holds the encoding (posterior samples drawn by image index, resumable files), ``statistics``
the per-channel mean/std, ``normalised`` the latents as the diffusion model sees them, ``importing`` the
check of latents encoded elsewhere; ``commands`` the ``encode`` and ``import-latents`` commands of
``workflow/rules/latents.smk``.
"""
