"""A released SiT checkpoint (another codebase's format) converted into a model directory of this project.

SiT (Ma et al. 2024, arXiv 2401.08740; code at github.com/willisma/SiT) saves PyTorch pickles: the
released ``SiT-XL-2-256x256.pt`` is the EMA state dict itself, SiT's training checkpoints are
``{"model", "ema", "opt", "args"}``. :func:`convert_sit` reads either, infers the architecture from the
tensor shapes, maps every key onto :class:`~diffusability.diffusion.transformer.DiffusionTransformer`
and writes ``config.json`` + ``ema.safetensors`` as ``train-diffusion`` writes them, so that
``train-diffusion --import-from`` takes the directory (docs/models.md §2.7).

Why the mapping is exact. SiT's network is this project's ``family: sit`` transformer with QK-norm off:
the same conv patch embedding, fixed 2-D sin-cos positions, 256-d [cos, sin] embedding of the
continuous t ∈ [0, 1] through a SiLU MLP, label table whose last row (index ``num_classes``) is the
null label, adaLN-Zero blocks (chunks shift/scale/gate for attention, then for the MLP;
``x·(1 + scale) + shift``) with LayerNorm without affine (ε 1e-6), qkv-biased attention, a 4d MLP with
tanh-GELU, and a final adaLN (shift, scale) → LayerNorm → Linear. The velocity convention is the same
(x_t = t·x1 + (1 − t)·x0, x0 noise, target x1 − x0). Three things differ in form only:

=====================================  ======================================  =============================
SiT key                                ours                                    how
=====================================  ======================================  =============================
``x_embedder.proj.{weight,bias}``      ``x_embedder.{weight,bias}``            renamed (timm PatchEmbed)
``y_embedder.embedding_table.weight``  ``y_embedder.table.weight``             renamed
``pos_embed`` (1, T, d)                a buffer recomputed from the config     checked equal, then dropped
``final_layer.linear.*`` (learn σ)     ``final_layer.linear.*``                rows with channel < C kept
=====================================  ======================================  =============================

Every other key has the same name and shape on both sides. With ``learn_sigma`` SiT's final Linear has
p²·2C outputs in (p, q, c) order and its forward keeps output channels c < C after unpatchify, which
uses the same (p, q, c) order as ours; so the rows whose channel index is below C are exactly the
velocity. A key without a counterpart, a missing key, a shape that does not fit or a position
embedding that is not the fixed sin-cos one is refused naming the file and the key.

What the checkpoint does not say: the number of attention heads (SiT's standard values by width are
:data:`SIT_HEADS`) and how the latents were normalised. SiT's release was trained on SD-VAE latents
multiplied by 0.18215 (per channel mean 0, std 1/0.18215); ``latent_scale`` or
``latent_mean``/``latent_std`` record that as ``latent_stats``, which the import compares with the
study's ``stats.safetensors`` (:func:`diffusability.diffusion.importing.check_latent_stats`).
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import DiffusabilityError, about, require
from ..io import provenance_metadata, reading, save_tensors, write_json
from ..progress import log
from .spec import FAMILY_DEFAULTS, DiffusionSpec

#: SiT's attention heads by width (SiT's model sizes: S 384 → 6, B 768 → 12, L 1024 → 16, XL 1152 → 16)
SIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
#: SiT keys renamed on the way in (everything else keeps its name)
RENAMED = {"x_embedder.proj.weight": "x_embedder.weight", "x_embedder.proj.bias": "x_embedder.bias",
           "y_embedder.embedding_table.weight": "y_embedder.table.weight"}
#: Largest accepted difference between the checkpoint's ``pos_embed`` and the sin-cos table recomputed here:
#: both are the same float64 formula rounded to float32 (≈ 1e-7; a float16/bfloat16 file: its machine epsilon
#: instead); a learned or transposed table differs by ~1.
POS_EMBED_TOLERANCE = 1e-4
#: the transport a training checkpoint's ``args`` must name (SiT's defaults, the release's settings)
SIT_TRANSPORT = {"path_type": "Linear", "prediction": "velocity"}
_BLOCK = re.compile(r"blocks\.(\d+)\.")


def read_sit_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The SiT state dict in ``path`` and where it was found.

    Parameters
    ----------
    path : path
        A ``.pt``/``.pth`` file written by ``torch.save``: a state dict, or a dict holding it under
        ``"ema"`` (preferred) or ``"model"``. Loaded with ``weights_only=True`` (plain ``argparse.Namespace``
        allowed, for the ``args`` of SiT's training checkpoints), on the CPU.

    Returns
    -------
    state : dict of str to Tensor
        SiT's keys → tensors as stored.
    info : dict
        ``{"source_key": "ema" | "model" | None, "args": dict or None}`` (``args``: the training arguments
        of a training checkpoint).

    Raises
    ------
    DiffusabilityError
        When the file is missing, unreadable, holds objects other than weights, or no state dict; the
        message names the file.
    """
    import argparse

    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    with reading(path, "PyTorch checkpoint"), torch.serialization.safe_globals([argparse.Namespace]):
        try:
            # a zip-format file is memory-mapped: a training checkpoint's model and optimizer state is never read
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            if found is None:  # not a pickle at all: say what the unpickler met, not torch's advice
                detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
                raise DiffusabilityError(f"{path}: not a valid PyTorch checkpoint (UnpicklingError: "
                                         f"{detail.group(1) if detail else str(exc).splitlines()[0][:200]})") from exc
            raise DiffusabilityError(
                f"{path}: holds Python objects other than weights ({found.group(1)}), which are not loaded "
                "(torch.load weights_only=True); a SiT checkpoint holds tensors, dicts and argparse.Namespace "
                "only") from exc
    require(isinstance(loaded, Mapping), f"{path}: holds a {type(loaded).__name__}, not a state dict")
    info: dict[str, Any] = {"source_key": None, "args": None}
    if "x_embedder.proj.weight" not in loaded:
        key = next((k for k in ("ema", "model") if isinstance(loaded.get(k), Mapping)), None)
        require(key is not None, f"{path}: neither a SiT state dict (no 'x_embedder.proj.weight') nor a training "
                                 f"checkpoint with 'ema' or 'model'; top-level keys {sorted(map(str, loaded))[:12]}")
        if key == "model":
            log.warning("%s holds no 'ema' weights: converting the raw training weights under 'model'", path)
        args = loaded.get("args")
        info = {"source_key": key, "args": vars(args) if isinstance(args, argparse.Namespace)
                else dict(args) if isinstance(args, Mapping) else None}
        loaded = loaded[key]
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    require(not bad, f"{path}: entries that are not named tensors: {bad[:8]}")
    return dict(loaded), info


def check_sit_transport(path: str | Path, args: Mapping[str, Any] | None) -> None:
    """Refuse a training checkpoint whose recorded transport is not SiT's Linear path with velocity prediction.

    ``args`` is the checkpoint's training arguments (None: nothing recorded, as in the released file,
    which was trained with the defaults). Our sampler integrates the velocity of the linear path; a
    noise- or score-predicting model, or one of the GVP/VP paths, would be sampled wrongly.
    """
    if not args:
        return
    for key, wanted in SIT_TRANSPORT.items():
        got = args.get(key, wanted)
        require(got == wanted, f"{path}: args.{key} is {got!r}; only SiT's {wanted!r} "
                               f"({', '.join(f'{k} {v}' for k, v in SIT_TRANSPORT.items())}) is the velocity "
                               f"this project samples")


def _shape(state: Mapping[str, torch.Tensor], key: str, path: Path, dims: int) -> tuple[int, ...]:
    require(key in state, f"{path}: no tensor {key!r}: not a SiT state dict")
    shape = tuple(state[key].shape)
    require(len(shape) == dims, f"{path}: {key} has shape {shape}, expected {dims} dimensions")
    return shape


def sit_architecture(state: Mapping[str, torch.Tensor], path: str | Path, heads: int | None = None) -> dict[str, Any]:
    """The architecture of a SiT state dict, read from its shapes.

    Parameters
    ----------
    state : mapping of str to Tensor
        SiT keys: ``x_embedder.proj.weight`` (d, C, p, p), ``pos_embed`` (1, T, d) with T = (G/p)²,
        ``y_embedder.embedding_table.weight`` (K + 1, d), ``blocks.<i>.*``, ``final_layer.linear.weight``
        (p²·C or p²·2C, d).
    path : path
        The checkpoint (named in errors).
    heads : int, optional
        Attention heads; by default SiT's standard value for the width (:data:`SIT_HEADS`).

    Returns
    -------
    dict
        ``in_channels`` C, ``grid_size`` G (the latent side, = √T·p), ``num_classes`` K, ``depth``, ``width``
        d, ``heads``, ``patch_size`` p, ``learn_sigma`` (the final layer also predicts a variance).
    """
    path = Path(path)
    width, channels, p, q = _shape(state, "x_embedder.proj.weight", path, 4)
    require(p == q, f"{path}: x_embedder.proj.weight has a {p}×{q} kernel; SiT's patches are square")
    _, tokens, pos_width = _shape(state, "pos_embed", path, 3)
    side = math.isqrt(tokens)
    require(side * side == tokens and pos_width == width,
            f"{path}: pos_embed has shape {tuple(state['pos_embed'].shape)}, expected (1, side², {width})")
    rows, table_width = _shape(state, "y_embedder.embedding_table.weight", path, 2)
    require(rows >= 2 and table_width == width,
            f"{path}: y_embedder.embedding_table.weight has shape {(rows, table_width)}; expected (classes + 1, "
            f"{width}), the last row the null label of classifier-free guidance")
    indices = sorted({int(m.group(1)) for key in state if (m := _BLOCK.match(key))})
    require(indices and indices == list(range(len(indices))),
            f"{path}: blocks numbered {indices[:8]}{'…' if len(indices) > 8 else ''}; "
            "expected blocks.0 … blocks.N−1")
    outputs, _ = _shape(state, "final_layer.linear.weight", path, 2)
    require(outputs in (p * p * channels, 2 * p * p * channels),
            f"{path}: final_layer.linear.weight has {outputs} outputs; a SiT with patch {p} and {channels} channels "
            f"has {p * p * channels} (velocity) or {2 * p * p * channels} (learn_sigma)")
    if heads is None:
        require(width in SIT_HEADS, f"{path}: width {width} is not one of SiT's sizes {sorted(SIT_HEADS)}: give the "
                                    "number of attention heads (--heads), the checkpoint's shapes do not tell it")
        heads = SIT_HEADS[width]
    require(isinstance(heads, int) and heads > 0 and width % heads == 0,
            f"{path}: width {width} is not divisible by --heads {heads}")
    return {"in_channels": channels, "grid_size": side * p, "num_classes": rows - 1, "depth": len(indices),
            "width": width, "heads": heads, "patch_size": p, "learn_sigma": outputs == 2 * p * p * channels}


def sit_spec(arch: Mapping[str, Any], name: str) -> DiffusionSpec:
    """The backbone spec of SiT's architecture: ``family: sit`` with its switches written out and QK-norm off.

    Only the architecture keys describe the checkpoint; the recipe keys keep the SiT family's values
    (which are SiT's published recipe: AdamW 1e-4, batch 256, EMA 0.9999, label dropout 0.1).
    """
    switches = {key: FAMILY_DEFAULTS["sit"][key] for key in ("pos_embed", "norm", "mlp")}
    return DiffusionSpec.from_dict({"name": name, "family": "sit", **switches, "qk_norm": False,
                                    **{k: arch[k] for k in ("depth", "width", "heads", "patch_size", "num_classes")}},
                                   source="converted SiT spec")


def convert_sit_state_dict(state: Mapping[str, torch.Tensor], arch: Mapping[str, Any],
                           path: str | Path) -> dict[str, torch.Tensor]:
    """SiT's state dict → ours (float32), every key of ours accounted for.

    Parameters
    ----------
    state : mapping of str to Tensor
        The SiT state dict (:func:`read_sit_checkpoint`).
    arch : mapping
        Its architecture (:func:`sit_architecture`).
    path : path
        The checkpoint (named in errors).

    Returns
    -------
    dict of str to Tensor
        Exactly the keys and shapes of ``DiffusionTransformer(config).state_dict()`` for the architecture.

    Raises
    ------
    DiffusabilityError
        A SiT key without a counterpart, a key of ours SiT lacks, a shape that does not fit, a non-float or
        non-finite tensor, or a ``pos_embed`` that is not the fixed 2-D sin-cos table; the message names the
        file and the key.
    """
    from .transformer import build_backbone, sincos_2d

    path = Path(path)
    # the model the converted spec describes (sit_spec: the one place SiT's switches are written out)
    with about(path), torch.device("meta"):  # names and shapes only: no memory, no initialisation cost for XL
        model = build_backbone(sit_spec(arch, "sit"), arch["in_channels"], arch["grid_size"], arch["num_classes"])
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    ours_of = {key: RENAMED.get(key, key) for key in state if key != "pos_embed"}
    unknown = sorted(key for key, ours in ours_of.items() if ours not in expected)
    require(not unknown, f"{path}: key(s) {unknown[:8]} have no counterpart in this project's SiT (QK-norm, other "
                         "layers or another layout are not supported)")
    missing = sorted({v: k for k, v in RENAMED.items()}.get(k, k) for k in set(expected) - set(ours_of.values()))
    require(not missing, f"{path}: missing key(s) {missing[:8]} of a SiT state dict")
    out: dict[str, torch.Tensor] = {}
    for key, ours in ours_of.items():
        tensor = state[key]
        require(tensor.is_floating_point(), f"{path}: {key} is {tensor.dtype}, expected floating point weights")
        tensor = tensor.detach().to(torch.float32)
        if arch["learn_sigma"] and key.startswith("final_layer.linear."):
            # outputs in SiT's (p, q, c) order over 2C channels; the velocity is channels c < C
            p2, c = arch["patch_size"] ** 2, arch["in_channels"]
            require(tensor.shape[0] == 2 * p2 * c, f"{path}: {key} has shape {tuple(tensor.shape)}, expected "
                                                   f"{2 * p2 * c} rows (learn_sigma)")
            tensor = tensor.reshape(p2, 2 * c, *tensor.shape[1:])[:, :c].reshape(p2 * c, *tensor.shape[1:])
        require(tuple(tensor.shape) == expected[ours],
                f"{path}: {key} has shape {tuple(state[key].shape)}, expected {expected[ours]} for {ours}")
        require(bool(torch.isfinite(tensor).all()), f"{path}: {key} contains NaN or Inf values")
        out[ours] = tensor.contiguous()
    stored = state["pos_embed"].detach()
    require(stored.is_floating_point(), f"{path}: pos_embed is {stored.dtype}, expected floating point")
    table = sincos_2d(arch["width"], arch["grid_size"] // arch["patch_size"]).double()
    difference = float((stored.double().reshape(-1, arch["width"]) - table).abs().max())
    # a half-precision checkpoint stores the table rounded to its precision (values in [−1, 1])
    tolerance = max(POS_EMBED_TOLERANCE, torch.finfo(stored.dtype).eps)
    require(difference <= tolerance,
            f"{path}: pos_embed is not the fixed 2-D sin-cos table this project recomputes (largest difference "
            f"{difference:.3g}, tolerance {tolerance:.3g}): a learned or differently laid out position embedding "
            "cannot be expressed")
    return out


def latent_stats(channels: int, scale: float | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> dict[str, list[float]] | None:
    """The ``latent_stats`` entry of ``config.json``: per-channel mean and std the model's latents were divided by.

    Parameters
    ----------
    channels : int
        C.
    scale : float, optional
        SiT's convention ``latent · scale`` (0.18215 for SD-VAE): mean 0, std 1/scale in every channel.
    mean, std : sequence of C floats, optional
        Explicit statistics (both or neither; not with ``scale``).

    Returns
    -------
    dict or None
        ``{"mean": [C floats], "std": [C floats]}``; None when nothing is given.
    """
    require(scale is None or (mean is None and std is None), "give --latent-scale or --latent-mean/--latent-std, "
                                                             "not both")
    require((mean is None) == (std is None), "--latent-mean and --latent-std go together")
    if scale is not None:
        require(math.isfinite(scale) and scale > 0, f"--latent-scale must be a positive number, got {scale}")
        return {"mean": [0.0] * channels, "std": [1.0 / float(scale)] * channels}
    if mean is None:
        return None
    for flag, values in (("--latent-mean", mean), ("--latent-std", std)):
        require(len(values) == channels, f"{flag} has {len(values)} values but the model has {channels} channels")
        require(all(math.isfinite(v) for v in values), f"{flag} has a non-finite value: {list(values)}")
    require(all(v > 0 for v in std), f"--latent-std must be positive, got {list(std)}")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def convert_sit(source: str | Path, out: str | Path, heads: int | None = None, latent_scale: float | None = None,
                latent_mean: Sequence[float] | None = None, latent_std: Sequence[float] | None = None,
                name: str | None = None) -> dict[str, Any]:
    """Convert the SiT checkpoint ``source`` into a model directory ``out`` (``config.json``, ``ema.safetensors``).

    Parameters
    ----------
    source : path
        SiT ``.pt``/``.pth`` (:func:`read_sit_checkpoint`).
    out : path
        The model directory written (atomically per file; nothing is written when a check fails).
    heads : int, optional
        Attention heads (default: :data:`SIT_HEADS` by width).
    latent_scale, latent_mean, latent_std : optional
        The latent normalisation the model was trained with (:func:`latent_stats`); recorded as
        ``latent_stats``. Without them none is recorded and the import warns.
    name : str, optional
        The spec's name (default: the file name without suffix).

    Returns
    -------
    dict
        The architecture (:func:`sit_architecture`) plus ``source_key`` and ``latent_stats``.

    Notes
    -----
    ``config.json`` holds what ``train-diffusion`` writes (``spec``, ``in_channels``, ``grid_size``,
    ``num_classes``, optionally ``latent_stats``) plus ``converted_from`` (format, file name, the
    checkpoint key used, ``learn_sigma``) instead of ``steps_done``.
    """
    source, out = Path(source), Path(out)
    state, info = read_sit_checkpoint(source)
    check_sit_transport(source, info["args"])
    arch = sit_architecture(state, source, heads)
    stats = latent_stats(arch["in_channels"], latent_scale, latent_mean, latent_std)
    weights = convert_sit_state_dict(state, arch, source)
    spec = sit_spec(arch, name or source.stem)
    shape = {k: arch[k] for k in ("in_channels", "grid_size", "num_classes")}
    converted = {"format": "sit", "file": source.name, "key": info["source_key"], "learn_sigma": arch["learn_sigma"]}
    save_tensors(out / "ema.safetensors", weights,
                 provenance_metadata(spec.to_dict(), inputs={"source": source}, converted_from=converted))
    config = {"spec": spec.to_dict(), **shape, "converted_from": converted}
    if stats is not None:
        config["latent_stats"] = stats
    write_json(out / "config.json", config)
    return {**arch, "source_key": info["source_key"], "latent_stats": stats}
