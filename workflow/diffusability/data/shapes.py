"""A procedural "shapes" image set with exact labels and exact foreground masks.

Each image shows one shape (circle, square, triangle, star, cross, ring) with one appearance
(warm or cool colour family, solid or striped) on a textured, noisy, coloured background. A
class is a (shape, appearance) pair, so a classifier must look at both the outline and the
colour/texture of the object; the backgrounds vary in hue, gradient, low-frequency texture and
noise so that neither the mean colour nor the background gives the class away.

Determinism: every random choice for image ``i`` comes from a generator keyed by
``(seed, "shapes", start_index + i)`` (see :mod:`diffusability.seeding`), so an image never
depends on how many images are generated alongside it, nor on the chunking used to render.
Labels are balanced in blocks of ``n_classes`` consecutive indices (each class exactly once
per block, in a seeded order), which is also a function of the index alone.

The mask is the set of pixels the shape was painted on (pixel centres inside the shape); no
anti-aliasing blends foreground into background, so ``mask`` is exact by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import require
from ..seeding import numpy_rng

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
APPEARANCES = ("warm solid", "cool solid", "warm striped", "cool striped")
MAX_CLASSES = len(SHAPES) * len(APPEARANCES)

# Area (in units of scale²) and circumradius (in units of scale) of each shape in its own
# coordinates; used to pick the scale that gives a target foreground fraction while keeping
# the whole shape inside the image.
_SHAPE_AREA = {
    "circle": math.pi,
    "square": (2 * 0.8) ** 2,
    "triangle": 3 * math.sqrt(3) * 0.5**2,  # equilateral triangle with inradius 0.5
    "star": 0.5 * (0.6**2 * 2 * math.pi + 0.4**2 * math.pi),  # r <= 0.6 + 0.4 cos(5φ)
    "cross": 2 * (2.0 * 0.6) - 0.6**2,
    "ring": math.pi * (1.0 - 0.55**2),
}
_SHAPE_CIRCUMRADIUS = {
    "circle": 1.0, "square": 0.8 * math.sqrt(2), "triangle": 1.0, "star": 1.0,
    "cross": math.sqrt(1.0 + 0.3**2), "ring": 1.0,
}
# Target foreground fraction of the image, before the fit-inside clamp; the clamp never takes
# a shape below 0.15 at the smallest allowed fraction (triangle: 0.30 max, star: 0.32 max).
_COVERAGE_RANGE = (0.15, 0.5)
_CHUNK = 256  # images rendered at once; bounds memory at 64 px to a few tens of MB


def class_definition(label: int) -> tuple[str, str]:
    """(shape, appearance) of class ``label``.

    Class ``c`` uses shape ``c % 6`` and appearance ``(7·(c // 6) + c % 6) % 4``: the first six
    classes are six different shapes, and each shape reappears with a different appearance,
    so for ``n_classes > 6`` neither shape nor appearance alone identifies the class.
    (For a fixed shape, ``7k mod 4`` is a bijection on k ∈ {0..3}, so all 24 pairs are distinct.)
    """
    require(0 <= label < MAX_CLASSES, f"shapes class {label}: expected 0 <= label < {MAX_CLASSES}")
    shape = label % len(SHAPES)
    appearance = (7 * (label // len(SHAPES)) + shape) % len(APPEARANCES)
    return SHAPES[shape], APPEARANCES[appearance]


@dataclass
class _ImageParams:
    """Per-image random draws, stacked over a chunk of images (all arrays have leading dim N)."""

    label: np.ndarray          # int64 (N,)
    center: np.ndarray         # float (N, 2) pixel coordinates (x, y)
    scale: np.ndarray          # float (N,) pixels per shape unit
    angle: np.ndarray          # float (N,) radians
    fg_hsv: np.ndarray         # float (N, 3)
    stripe_period: np.ndarray  # float (N,) in shape units
    stripe_phase: np.ndarray   # float (N,)
    bg_hsv: np.ndarray         # float (N, 3)
    bg_gradient: np.ndarray    # float (N, 3): direction angle, strength, unused
    bg_waves: np.ndarray       # float (N, 3, 4): per wave (freq_x, freq_y, phase, amplitude)
    noise: np.ndarray          # float32 (N, H, W, 3), zero mean, unit variance
    bg_noise_sigma: np.ndarray  # float (N,)


def _block_label(seed: int, index: int, n_classes: int, cache: dict) -> int:
    """Label of image ``index``: each block of ``n_classes`` indices is a seeded permutation."""
    block, position = divmod(index, n_classes)
    if block not in cache:
        cache[block] = numpy_rng(seed, "shapes-labels", n_classes, block).permutation(n_classes)
    return int(cache[block][position])


def _draw_params(seed: int, indices: range, n_classes: int, image_size: int) -> _ImageParams:
    """Draw every random quantity of the images ``indices``, one generator per image."""
    n = len(indices)
    out = {name: [] for name in _ImageParams.__dataclass_fields__}
    label_blocks: dict = {}
    for index in indices:
        rng = numpy_rng(seed, "shapes", index)
        label = _block_label(seed, index, n_classes, label_blocks)
        shape, appearance = class_definition(label)

        coverage = rng.uniform(*_COVERAGE_RANGE)
        scale = math.sqrt(coverage * image_size**2 / _SHAPE_AREA[shape])
        # Keep the whole shape inside the image, off the border pixels, so the mask is the full
        # shape and never a cropped one.
        max_scale = (0.5 * image_size - 1.5) / _SHAPE_CIRCUMRADIUS[shape]
        scale = min(scale, max_scale)
        reach = scale * _SHAPE_CIRCUMRADIUS[shape] + 1.0
        low, high = reach, image_size - reach
        center = rng.uniform(low, max(low, high), size=2)

        warm = appearance.startswith("warm")
        hue = rng.uniform(-0.04, 0.12) if warm else rng.uniform(0.50, 0.70)
        fg_hsv = (hue % 1.0, rng.uniform(0.65, 1.0), rng.uniform(0.6, 1.0))

        out["label"].append(label)
        out["center"].append(center)
        out["scale"].append(scale)
        out["angle"].append(rng.uniform(0.0, 2 * math.pi))
        out["fg_hsv"].append(fg_hsv)
        out["stripe_period"].append(rng.uniform(0.35, 0.55) if appearance.endswith("striped") else 0.0)
        out["stripe_phase"].append(rng.uniform(0.0, 1.0))
        out["bg_hsv"].append((rng.uniform(0.0, 1.0), rng.uniform(0.1, 0.6), rng.uniform(0.25, 0.85)))
        out["bg_gradient"].append((rng.uniform(0.0, 2 * math.pi), rng.uniform(0.0, 0.35), 0.0))
        waves = np.stack([rng.uniform(-4.0, 4.0, 3), rng.uniform(-4.0, 4.0, 3),
                          rng.uniform(0.0, 2 * math.pi, 3), rng.uniform(0.0, 0.12, 3)], axis=1)
        out["bg_waves"].append(waves)
        # Uniform on [-√3, √3) (unit variance): three times cheaper to draw than a normal.
        noise = rng.random((image_size, image_size, 3), dtype=np.float32)
        out["noise"].append((noise - np.float32(0.5)) * np.float32(2 * math.sqrt(3)))
        out["bg_noise_sigma"].append(rng.uniform(0.015, 0.06))
    arrays = {name: np.asarray(values) for name, values in out.items()}
    arrays["label"] = arrays["label"].astype(np.int64).reshape(n)
    return _ImageParams(**arrays)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (..., 3) → RGB in [0, 1] (..., 3), the standard hexcone model."""
    h, s, v = hsv[..., 0] % 1.0, hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.astype(np.int64) % 6
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def _shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) in the shape's own unit coordinates lie inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        inside = np.ones(u.shape, dtype=bool)
        for k in range(3):  # three half-planes with outward normals at 90° + 120°·k
            phi = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(phi) + v * math.sin(phi) <= 0.5
        return inside
    if shape == "star":
        radius = np.sqrt(u * u + v * v)
        return radius <= 0.6 + 0.4 * np.cos(5.0 * np.arctan2(v, u))
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    raise ValueError(shape)


def _render(params: _ImageParams, image_size: int, constant_background: bool):
    """Paint a chunk of images: returns (uint8 (N,H,W,3), bool (N,H,W)).

    Arithmetic is float32 (twice as fast as float64 here); the mask is whatever the inside test
    returned and the same boolean array selects the painted pixels, so precision cannot make
    the mask and the image disagree.
    """
    f32 = np.float32
    n = len(params.label)
    coords = np.arange(image_size, dtype=f32) + f32(0.5)  # pixel centres
    x = coords[None, None, :]
    y = coords[None, :, None]

    # Shape coordinates: translate to the centre, rotate by -angle, divide by the scale.
    dx = x - params.center[:, 0, None, None].astype(f32)
    dy = y - params.center[:, 1, None, None].astype(f32)
    cos = np.cos(params.angle).astype(f32)[:, None, None]
    sin = np.sin(params.angle).astype(f32)[:, None, None]
    inv = (1.0 / params.scale).astype(f32)[:, None, None]
    u = (cos * dx + sin * dy) * inv
    v = (cos * dy - sin * dx) * inv

    masks = np.zeros((n, image_size, image_size), dtype=bool)
    for shape_index, shape in enumerate(SHAPES):
        members = np.nonzero(params.label % len(SHAPES) == shape_index)[0]
        if len(members):
            masks[members] = _shape_inside(shape, u[members], v[members])

    # Foreground colour: solid, or stripes (across the shape's own u axis, so they rotate with
    # it) alternating the colour with a darker version of it.
    fg_rgb = hsv_to_rgb(params.fg_hsv).astype(f32)[:, None, None, :]
    striped = params.stripe_period > 0
    period = np.where(striped, params.stripe_period, 1.0).astype(f32)[:, None, None]
    phase = params.stripe_phase.astype(f32)[:, None, None]
    dark_stripe = (np.floor(u / period + phase) % 2 == 1) & striped[:, None, None]
    fg = fg_rgb * np.where(dark_stripe, f32(0.45), f32(1.0))[..., None]
    fg += f32(0.02) * params.noise

    if constant_background:
        # Pure black: never produced by the foreground, whose brightest channel is the HSV value
        # (>= 0.6 · 0.45 on a dark stripe) and the noise (|0.02·noise| < 0.035) cannot zero it.
        bg = np.zeros((n, image_size, image_size, 3), dtype=f32)
    else:
        base = hsv_to_rgb(params.bg_hsv).astype(f32)
        direction = params.bg_gradient[:, 0]
        gx = (np.cos(direction) * 2.0 * params.bg_gradient[:, 1] / image_size).astype(f32)[:, None, None]
        gy = (np.sin(direction) * 2.0 * params.bg_gradient[:, 1] / image_size).astype(f32)[:, None, None]
        # A linear brightness ramp through the image centre, then a few coloured plane waves.
        shade = f32(1.0) + gx * (x - f32(image_size / 2)) + gy * (y - f32(image_size / 2))  # (N,H,W)
        bg = shade[..., None] * base[:, None, None, :]
        xn, yn = x / f32(image_size), y / f32(image_size)
        for k in range(params.bg_waves.shape[1]):
            fx, fy, wave_phase, amp = (params.bg_waves[:, k, j].astype(f32)[:, None, None] for j in range(4))
            wave = amp * np.sin(f32(2 * math.pi) * (fx * xn + fy * yn) + wave_phase)
            tint = hsv_to_rgb(np.stack([params.bg_hsv[:, 0] + 0.25 * (k + 1),
                                        np.full(n, 0.8), np.ones(n)], axis=-1)).astype(f32) - f32(0.5)
            bg += wave[..., None] * tint[:, None, None, :]
        bg += params.bg_noise_sigma.astype(f32)[:, None, None, None] * params.noise

    image = np.where(masks[..., None], fg, bg)
    image *= f32(255.0)
    np.rint(image, out=image)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8), masks


def generate_shapes(n: int, image_size: int, seed: int, n_classes: int = 8, start_index: int = 0,
                    *, constant_background: bool = False) -> dict:
    """Generate ``n`` labelled shape images with exact foreground masks.

    Args:
        n: number of images (>= 0).
        image_size: side length in pixels (>= 16; 32 and 64 are the intended sizes).
        seed: base seed; image ``i`` depends only on ``(seed, start_index + i)``.
        n_classes: number of (shape, appearance) classes, 1..24.
        start_index: index of the first image in the stream (for disjoint or resumed chunks).
        constant_background: paint on pure black instead of the textured background (tests).

    Returns:
        ``{"images": uint8 (N, H, W, 3), "labels": int64 (N,), "masks": bool (N, H, W)}``
        with ``H = W = image_size``; ``masks`` is True exactly where the shape was painted.
    """
    require(isinstance(n, (int, np.integer)) and n >= 0, f"shapes n={n!r}: expected an integer >= 0")
    require(isinstance(image_size, (int, np.integer)) and image_size >= 16,
            f"shapes image_size={image_size!r}: expected an integer >= 16")
    require(isinstance(n_classes, (int, np.integer)) and 1 <= n_classes <= MAX_CLASSES,
            f"shapes n_classes={n_classes!r}: expected an integer in 1..{MAX_CLASSES}")
    require(isinstance(start_index, (int, np.integer)) and start_index >= 0,
            f"shapes start_index={start_index!r}: expected an integer >= 0")
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    labels = np.empty((n,), dtype=np.int64)
    for begin in range(0, n, _CHUNK):
        end = min(n, begin + _CHUNK)
        params = _draw_params(seed, range(start_index + begin, start_index + end), n_classes, image_size)
        images[begin:end], masks[begin:end] = _render(params, image_size, constant_background)
        labels[begin:end] = params.label
    return {"images": images, "labels": labels, "masks": masks}
