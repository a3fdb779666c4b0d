"""The reconstruction stage: how well each tokenizer reconstructs the val split, trained and untrained.

``quality`` holds the maths (PSNR on uint8, SSIM), ``measure`` streams a split through a tokenizer and
scores it, ``commands`` is the ``reconstruction`` command of ``workflow/rules/reconstruction.smk``.
"""
