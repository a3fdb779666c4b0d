"""The latents stage: each tokenizer's train/val latents, val masks on the latent grid, channel statistics.

``encode`` holds the encoding (posterior samples drawn by image index, resumable files); ``commands``
the ``encode`` and ``import-latents`` commands of ``workflow/rules/latents.smk``.
"""
