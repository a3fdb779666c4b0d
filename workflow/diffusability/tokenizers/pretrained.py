"""Pretrained tokenizers: turn a local checkpoint into a tokenizer directory without training.

A config entry ``tokenizers.<name>.pretrained: PATH`` names either

- a diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or
- a tokenizer of our own format: a folder with ``config.json`` + ``model.safetensors``, or the
  ``.safetensors`` file itself with ``config.json`` beside it.

The result is the directory ``train_tokenizer`` would have written (``model.safetensors`` +
``config.json``), so ``load_tokenizer`` and the rest of the DAG cannot tell the difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import about, require
from .diffusers_import import is_diffusers_folder, read_diffusers_folder
from .factory import CONFIG_FILE, WEIGHTS_FILE, build_tokenizer
from .spec import TokenizerSpec, as_spec

#: keys of the import spec that describe the study, not the network (everything else is taken from the source)
STUDY_KEYS = ("name", "seed", "image_size")


def write_checked_tokenizer(state: Mapping[str, Any], spec: TokenizerSpec, out_dir: str | Path,
                            source: str) -> Path:
    """Check ``state`` against the network ``spec`` builds (names and shapes), then write the directory."""
    from ..io import provenance_metadata, save_tensors, write_json

    expected = build_tokenizer(spec).state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    require(not missing and not unexpected,
            f"{source}: weights do not match the architecture (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, value in state.items():
        require(tuple(value.shape) == tuple(expected[key].shape),
                f"{source}: {key} has shape {tuple(value.shape)}, the architecture expects {tuple(expected[key].shape)}")
        require(not value.is_floating_point() or bool(value.isfinite().all()),
                f"{source}: {key} contains NaN or Inf values")
    out_dir = Path(out_dir)
    save_tensors(out_dir / WEIGHTS_FILE, {k: v.float().contiguous() for k, v in state.items()},
                 metadata={"format": "diffusability-conv-vae", "source": source,
                           **provenance_metadata(spec.to_dict())})
    write_json(out_dir / CONFIG_FILE, spec.to_dict())
    return out_dir


def _own_format_files(path: Path) -> tuple[Path, Path] | None:
    """(weights, config) of a tokenizer in our format at ``path``, or None."""
    if path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file():
        return path / WEIGHTS_FILE, path / CONFIG_FILE
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / CONFIG_FILE).is_file():
        return path, path.parent / CONFIG_FILE
    return None


def import_pretrained_tokenizer(source: str | Path, study: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write the tokenizer at ``source`` into ``out_dir`` as a tokenizer directory; return ``out_dir``.

    ``study`` holds ``name``, ``seed`` and ``image_size`` of the config entry (the data's image size).
    A diffusers VAE takes its architecture from its config.json; one of ours keeps its whole spec
    except the name and seed, and its image size must equal the study's.
    """
    from ..io import load_tensors, read_json

    source = Path(source)
    require(source.exists(), f"pretrained tokenizer {source}: not found (tokenizers.<name>.pretrained must be a "
                             "diffusers AutoencoderKL folder or a folder with config.json + model.safetensors)")
    unknown = sorted(set(study) - set(STUDY_KEYS))
    require(not unknown, f"import-tokenizer spec: unknown key(s) {unknown}; known keys are {list(STUDY_KEYS)}")
    require("image_size" in study, "import-tokenizer spec: 'image_size' is required")
    require(isinstance(study["image_size"], int) and not isinstance(study["image_size"], bool)
            and study["image_size"] >= 1,
            f"import-tokenizer spec: 'image_size' must be a positive integer, got {study['image_size']!r}")
    study = {k: study[k] for k in STUDY_KEYS if k in study}
    if is_diffusers_folder(source):
        architecture, state = read_diffusers_folder(source, int(study["image_size"]))
        spec = as_spec({**study, **architecture})
        return write_checked_tokenizer(state, spec, out_dir, f"diffusers AutoencoderKL {source}")
    files = _own_format_files(source)
    require(files is not None,
            f"pretrained tokenizer {source}: neither a diffusers AutoencoderKL folder (config.json + "
            "diffusion_pytorch_model.safetensors) nor a tokenizer of ours (config.json + model.safetensors)")
    weights, config = files
    own = read_json(config)
    require(isinstance(own, dict), f"{config}: expected a JSON object (a tokenizer spec)")
    require(own.get("image_size") == study["image_size"],
            f"{config}: image_size {own.get('image_size')!r} differs from the study's {study['image_size']}")
    with about(config):
        spec = as_spec({**own, **study})
    return write_checked_tokenizer(load_tensors(weights), spec, out_dir, f"tokenizer {weights}")
