"""Seeds derived from names, never from rank or world size.

Every random stream in the project is keyed by a tuple of names and numbers, so that the
same artifact is reproduced on 1 or 8 processes, and two artifacts never share a stream by
accident (e.g. ``derive_seed(base, "sample", i)`` for the noise of sample ``i``).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of names/numbers (stable across Python processes)."""
    text = "\x1f".join(repr(p) if not isinstance(p, str) else p for p in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_generator(*parts: object, device: str = "cpu"):
    """A ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


def numpy_rng(*parts: object):
    """A ``numpy.random.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    import numpy as np

    return np.random.default_rng(derive_seed(*parts))


def seeded_subset(count: int, limit, *names) -> "torch.Tensor":
    """Sorted indices of a seeded random subset of ``limit`` of ``count`` items (all when limit is None)."""
    import torch

    from .errors import require

    if limit is None or int(limit) >= count:
        return torch.arange(count)
    require(int(limit) >= 2, f"subset size {limit}: expected ≥ 2")
    return torch.randperm(count, generator=torch_generator(*names))[:int(limit)].sort().values
