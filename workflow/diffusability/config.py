"""The workflow configuration: schema validation with defaults, and per-job specs.

The Snakefile calls :func:`validate_config` before building the DAG, so a bad key fails before
any job runs, with a message that names the key and what was expected. The ``*_spec``
functions cut the slice of the config one job depends on — and nothing more, so that adding
a tokenizer does not change the parameters (and so the rerun status) of any other job.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import DiffusabilityError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"

# Architecture defaults of the two backbone families (MODELS.md §2.6, the paper's Table 2).
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sit": {"pos_embed": "sincos", "norm": "layernorm", "mlp": "gelu", "time_sampling": "uniform",
            "loss": "mse", "betas": [0.9, 0.999]},
    "lightningdit": {"pos_embed": "rope+sincos", "norm": "rmsnorm", "mlp": "swiglu",
                     "time_sampling": "logit_normal", "loss": "mse+cosine", "betas": [0.9, 0.95]},
}


def load_schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error) -> str:
    """One line per schema violation: the key, what was found, what was expected."""
    key = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        where = f"in {key}" if key != "(top level)" else "at the top level"
        return f"unknown key(s) {', '.join(map(repr, extra))} {where}; allowed: {', '.join(allowed)}"
    if error.validator == "enum":
        options = ", ".join(map(str, error.validator_value))
        return f"{key}: {error.instance!r} is not one of: {options}"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{key}: expected {expected}, got {type(error.instance).__name__} {error.instance!r}"
    if error.validator == "required":
        return f"{key}: {error.message}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    hint = f" ({description})" if description else ""
    return f"{key}: {error.message}{hint}"


def _validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that also writes ``default`` values into the instance."""
    from jsonschema import Draft202012Validator, validators

    base_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "$ref" in subschema and "default" not in subschema:
                    continue
                if name not in instance and "default" in subschema:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from base_properties(validator, properties, instance, schema)

    extended = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    return extended(schema)


def validate_config(config: dict) -> dict:
    """Validate ``config`` against the schema and return a copy with defaults filled in.

    Raises :class:`DiffusabilityError` listing every violation as ``key.path: problem``.
    """
    if not isinstance(config, dict):
        raise DiffusabilityError("the config must be a mapping of keys to values")
    filled = copy.deepcopy(config)
    validator = _validator_with_defaults(load_schema())
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors)
        raise DiffusabilityError(f"invalid config:\n  {lines}")
    _check_cross_references(filled)
    return filled


def _check_cross_references(config: dict) -> None:
    data = config["data"]
    if data["source"] == "imagenet":
        paths = data.get("imagenet") or {}
        missing = [k for k in ("train_dir", "val_dir") if not paths.get(k)]
        if missing:
            raise DiffusabilityError(f"data.imagenet.{missing[0]}: required when data.source is 'imagenet'")
    for name, tok in config["tokenizers"].items():
        levels = len(tok["channel_mult"])
        factor = 2 ** (levels - 1)
        if data["image_size"] % factor:
            raise DiffusabilityError(
                f"tokenizers.{name}.channel_mult: {levels - 1} downsamplings (f{factor}) do not divide "
                f"data.image_size {data['image_size']}")


def downsample_factor(tokenizer: dict) -> int:
    return 2 ** (len(tokenizer["channel_mult"]) - 1)


def tokenizer_family(tokenizer: dict) -> str:
    """``conv-f4d4``-style family name unless the config sets one."""
    if tokenizer.get("family"):
        return tokenizer["family"]
    return f"{tokenizer['architecture']}-f{downsample_factor(tokenizer)}d{tokenizer['latent_channels']}"


def data_spec(config: dict) -> dict:
    return {"seed": config["seed"], **config["data"]}


def teacher_spec(config: dict) -> dict:
    return {"seed": config["seed"], **config["teacher"]}


def tokenizer_spec(config: dict, name: str) -> dict:
    """Everything the training of tokenizer ``name`` depends on."""
    entry = config["tokenizers"][name]
    spec = {k: v for k, v in entry.items() if k != "family"}
    return {"name": name, "seed": config["seed"], "image_size": config["data"]["image_size"], **spec}


def encode_spec(config: dict) -> dict:
    return {"seed": config["seed"], **config["encode"]}


def backbone_spec(config: dict, tok: str, bb: str) -> dict:
    """Everything the training of backbone ``bb`` on tokenizer ``tok``'s latents depends on."""
    entry = dict(config["backbones"][bb])
    resolved = {**FAMILY_DEFAULTS[entry["family"]], **entry}
    # The same seed for every tokenizer: common random numbers make the comparison fairer.
    return {"name": bb, "seed": config["seed"],
            "num_classes": config["data"]["n_classes"], **resolved}


def sampling_spec(config: dict) -> dict:
    sampling = {k: v for k, v in config["sampling"].items() if k not in ("cfg_scales", "untrained_baseline")}
    return {"seed": config["seed"], **sampling}


def generation_spec(config: dict) -> dict:
    return dict(config["generation"])


def metrics_spec(config: dict) -> dict:
    return {"seed": config["seed"], **config["metrics"]}


def to_json(spec: dict) -> str:
    """Canonical JSON (sorted keys) so equal specs compare equal as Snakemake params."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))
