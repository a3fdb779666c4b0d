"""One source of truth for every default: the spec dataclasses (and the command modules' default
tables) hold the defaults, and the schema's ``default:`` values equal them key by key.

Both paths must train the same thing: a config entry that leaves a key out (the workflow path,
schema defaults written in by validation) and the Python API called without it (the dataclass
defaults). The expected values are compared side by side, never typed from the code's output.
"""

from __future__ import annotations

import dataclasses

import pytest

from diffusability.workflow import config as cfg
from diffusability.workflow.config import load_schema, validate_config

#: a tokenizer entry's key that selects the import rule instead of training (never a training-spec key)
TOKENIZER_IMPORT_ONLY = {"pretrained"}
#: keys of the sampling section that only the workflow reads (which jobs exist)
SAMPLING_WORKFLOW_ONLY = {"cfg_scales", "untrained_baseline"}


@pytest.fixture(scope="module")
def schema():
    return load_schema()


def plain(value):
    """Tuples as lists, recursively, so a dataclass default compares with a YAML default."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def schema_defaults(properties: dict) -> dict:
    return {key: sub["default"] for key, sub in properties.items() if "default" in sub}


def disagreements(properties: dict, actual: dict, skip=()) -> list[str]:
    """``key: schema X, code Y`` for every schema default that the code's default does not equal."""
    out = []
    for key, default in schema_defaults(properties).items():
        if key in skip:
            continue
        if key not in actual:
            out.append(f"{key}: schema default {default!r}, no such key in the code")
        elif plain(actual[key]) != plain(default):
            out.append(f"{key}: schema {default!r}, code {actual[key]!r}")
    return out


def workflow_only(properties: dict, spec_of_entry) -> set[str]:
    """The entry keys that the workflow's spec builder leaves out of the job's spec (labels, paths, jobs)."""
    kept = spec_of_entry({key: None for key in properties})
    return set(properties) - set(kept)


def tokenizer_workflow_only(properties: dict) -> set[str]:
    return TOKENIZER_IMPORT_ONLY | workflow_only(properties, lambda entry: cfg.tokenizer_spec(
        {"seed": 0, "data": {"image_size": 32}, "tokenizers": {"a": entry}}, "a"))


def backbone_workflow_only(properties: dict) -> set[str]:
    return workflow_only(properties, lambda entry: cfg.backbone_spec(
        {"seed": 0, "data": {"n_classes": 2}, "backbones": {"bb": {**entry, "family": "sit"}}}, "a", "bb"))


def field_defaults(instance) -> dict:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def minimal_config(tokenizer: dict | None = None, backbone: dict | None = None) -> dict:
    """The smallest valid config: every key the user may leave out is left out."""
    return validate_config({
        "data": {},
        "tokenizers": {"a": dict(tokenizer or {}), "b": {}},
        "backbones": {"bb": dict(backbone or {"family": "sit", "depth": 1, "width": 16, "heads": 2})},
        "sampling": {},
    })


# ----------------------------------------------------------------------------- tokenizers

def test_tokenizer_schema_defaults_equal_the_spec(schema):
    from diffusability.tokenizers.spec import TokenizerSpec

    properties = schema["$defs"]["tokenizer"]["properties"]
    skip = tokenizer_workflow_only(properties)
    assert {"family", "teacher"} <= skip
    assert disagreements(properties, field_defaults(TokenizerSpec()), skip=skip) == []
    # every key the workflow passes on is a spec field (else the spec would refuse the job)
    fields = {f.name for f in dataclasses.fields(TokenizerSpec)}
    assert set(properties) - skip <= fields


def test_tokenizer_keys_without_schema_default_are_documented_as_the_spec_default(schema):
    from diffusability.tokenizers.spec import TokenizerSpec

    properties = schema["$defs"]["tokenizer"]["properties"]
    spec = TokenizerSpec()
    assert "unset = teacher" in properties["perceptual"]["description"] and spec.perceptual == "teacher"
    assert "unset = fp32" in properties["precision"]["description"] and spec.precision == "fp32"
    assert "unset = each process's whole share" in properties["micro_batch_size"]["description"]
    assert spec.micro_batch_size is None and spec.lpips_weights is None


def test_an_empty_tokenizer_entry_trains_the_python_api_default():
    from diffusability.tokenizers.spec import TokenizerSpec

    config = minimal_config()
    workflow = TokenizerSpec.from_dict(cfg.tokenizer_spec(config, "a"))
    api = TokenizerSpec(name="a", seed=config["seed"], image_size=config["data"]["image_size"])
    assert workflow.to_dict() == api.to_dict()


# ----------------------------------------------------------------------------- backbones

@pytest.mark.parametrize("family", ["sit", "lightningdit"])
def test_backbone_schema_defaults_equal_the_spec(schema, family):
    from diffusability.diffusion.spec import FAMILY_DEFAULTS, DiffusionSpec

    properties = schema["$defs"]["backbone"]["properties"]
    skip = backbone_workflow_only(properties)
    assert skip == {"cfg_scales"}
    spec = DiffusionSpec.from_dict({"family": family})
    assert disagreements(properties, field_defaults(spec), skip=skip) == []
    # the family-dependent keys carry no schema default (one would override the family's value)
    assert not set(FAMILY_DEFAULTS[family]) & set(schema_defaults(properties))
    fields = {f.name for f in dataclasses.fields(DiffusionSpec)}
    assert set(properties) - skip <= fields


@pytest.mark.parametrize("family", ["sit", "lightningdit"])
def test_a_backbone_entry_trains_the_python_api_default(family):
    from diffusability.diffusion.spec import DiffusionSpec

    entry = {"family": family, "depth": 2, "width": 32, "heads": 2}
    config = minimal_config(backbone=entry)
    workflow = DiffusionSpec.from_dict(cfg.backbone_spec(config, "a", "bb"))
    api = DiffusionSpec.from_dict({**entry, "name": "bb", "seed": config["seed"],
                                   "num_classes": config["data"]["n_classes"]})
    assert workflow.to_dict() == api.to_dict()


@pytest.mark.parametrize("family,lr,betas", [("sit", 1e-4, (0.9, 0.999)), ("lightningdit", 2e-4, (0.9, 0.95))])
def test_learning_rate_is_the_papers_table_2_on_every_path(family, lr, betas):
    """The paper's Table 2: SiT lr 1e-4, β2 0.999; LightningDiT lr 2e-4, β2 0.95."""
    from diffusability.diffusion.spec import DiffusionSpec

    entry = {"family": family, "depth": 1, "width": 16, "heads": 2}
    workflow = cfg.backbone_spec(minimal_config(backbone=entry), "a", "bb")
    assert (workflow["lr"], tuple(workflow["betas"])) == (lr, betas)
    api = DiffusionSpec.from_dict({"family": family})
    assert (api.lr, api.betas) == (lr, betas)
    # an explicit value wins on both paths
    assert cfg.backbone_spec(minimal_config(backbone={**entry, "lr": 3e-4}), "a", "bb")["lr"] == 3e-4
    assert DiffusionSpec.from_dict({"family": family, "lr": 3e-4}).lr == 3e-4


@pytest.mark.parametrize("family", ["sit", "lightningdit"])
def test_transformer_factories_and_config_defaults_follow_the_spec(family):
    from diffusability.diffusion import transformer
    from diffusability.diffusion.spec import DiffusionSpec

    spec = DiffusionSpec.from_dict({"family": family})
    built = getattr(transformer, f"{family}_b")(in_channels=4)
    for key in ("depth", "width", "heads", "pos_embed", "norm", "mlp", "qk_norm"):
        assert getattr(built, key) == getattr(spec, key), key
    plain_config = transformer.TransformerConfig(in_channels=4, grid_size=16, num_classes=10)
    sit = DiffusionSpec.from_dict({"family": "sit"})
    for key in ("depth", "width", "heads", "patch_size", "pos_embed", "norm", "mlp", "qk_norm", "use_checkpoint"):
        assert getattr(plain_config, key) == getattr(sit, key), key


# ----------------------------------------------------------------------------- the other specs

def test_top_level_seed_default_is_every_specs_seed_default(schema):
    from diffusability.data.spec import SHARD_SPEC_DEFAULTS
    from diffusability.teacher.domain_net import DomainNetSpec
    from diffusability.latent_metrics.spec import MODEL_METRICS_DEFAULTS as MODEL_DEFAULTS, TOKENIZER_METRICS_DEFAULTS as TOKENIZER_DEFAULTS
    from diffusability.sampling.spec import SamplingSpec
    from diffusability.latents.spec import ENCODE_DEFAULTS
    from diffusability.tokenizers.spec import TokenizerSpec
    from diffusability.diffusion.spec import DiffusionSpec

    seed = schema["properties"]["seed"]["default"]
    assert [DomainNetSpec().seed, SamplingSpec().seed, ENCODE_DEFAULTS["seed"], TokenizerSpec().seed,
            DiffusionSpec().seed, TOKENIZER_DEFAULTS["seed"], MODEL_DEFAULTS["seed"],
            SHARD_SPEC_DEFAULTS["seed"]] == [seed] * 8


def test_data_schema_defaults_equal_the_data_spec(schema):
    from diffusability.data.spec import SHARD_SPEC_DEFAULTS
    from diffusability.data.spec import DataSpec, ImagenetSpec

    data = schema["properties"]["data"]["properties"]
    assert disagreements(data, field_defaults(DataSpec(seed=0)), skip={"imagenet"}) == []
    imagenet = data["imagenet"]["properties"]
    ingest = set(cfg.IMAGENET_INGEST_KEYS)
    assert disagreements(imagenet, field_defaults(ImagenetSpec()), skip=ingest) == []
    # the manifest and shard rules: config.imagenet_spec's defaults and the shard command's
    resolved = cfg.imagenet_spec({"data": {"source": "imagenet", "imagenet": {}}})
    assert disagreements(imagenet, resolved) == []
    shard_keys = {"shard_size", "workers", "max_bad_fraction", "masks_dir", "mask_categories"}
    assert disagreements(imagenet, SHARD_SPEC_DEFAULTS, skip=set(imagenet) - shard_keys) == []
    # the keys the shard spec shares with prepare-data's ImageNet spec: the dataclass's defaults, key by key
    shared = set(SHARD_SPEC_DEFAULTS) & set(field_defaults(ImagenetSpec()))
    assert shared == {"max_bad_fraction", "masks_dir", "mask_categories"}
    for key in sorted(shared):
        assert SHARD_SPEC_DEFAULTS[key] == getattr(ImagenetSpec(), key), key


def test_teacher_schema_defaults_equal_the_domain_net_spec(schema):
    from diffusability.teacher.domain_net import DomainNetSpec

    teacher = schema["properties"]["teacher"]["properties"]
    assert disagreements(teacher, field_defaults(DomainNetSpec())) == []


def test_encode_schema_defaults_equal_the_encode_defaults(schema):
    from diffusability.latents.spec import ENCODE_DEFAULTS

    encode = schema["properties"]["encode"]["properties"]
    assert disagreements(encode, ENCODE_DEFAULTS) == []
    assert set(encode) <= set(ENCODE_DEFAULTS)
    assert "unset = no" in encode["flip"]["description"] and ENCODE_DEFAULTS["flip"] is False
    assert f"unset = {ENCODE_DEFAULTS['chunk']}" in encode["chunk"]["description"]


def test_encode_defaults_equal_the_functions_they_configure():
    """The encode spec's mask pooling and chunk are the Python API's defaults (pool_masks_to_grid, CHUNK)."""
    import inspect

    from diffusability.data.masks import pool_masks_to_grid
    from diffusability.latents.spec import ENCODE_DEFAULTS
    from diffusability.latents.encode import CHUNK

    pooling = inspect.signature(pool_masks_to_grid).parameters
    assert ENCODE_DEFAULTS["mask_pooling"] == pooling["rule"].default
    assert ENCODE_DEFAULTS["mask_threshold"] == pooling["threshold"].default
    assert ENCODE_DEFAULTS["chunk"] == CHUNK


def test_sampling_schema_defaults_equal_the_sampling_spec(schema):
    from diffusability.sampling.spec import SamplingSpec

    sampling = schema["properties"]["sampling"]["properties"]
    assert disagreements(sampling, field_defaults(SamplingSpec()), skip=SAMPLING_WORKFLOW_ONLY) == []


def test_generation_and_reconstruction_defaults_equal_the_schema(schema):
    from diffusability.evaluation.generation import GenerationSpec
    from diffusability.reconstruction.commands import reconstruction_defaults

    generation = schema["properties"]["generation"]["properties"]
    assert disagreements(generation, field_defaults(GenerationSpec())) == []
    assert disagreements(generation, reconstruction_defaults()) == []
    # the reconstruction spec reads the generation section: its shared keys are GenerationSpec's, key by key
    reconstruction = reconstruction_defaults()
    shared = set(reconstruction) & set(field_defaults(GenerationSpec()))
    assert shared == {"batch_size", "is_splits"}
    for key in sorted(shared):
        assert reconstruction[key] == getattr(GenerationSpec(), key), key
    # pr_k has no schema default (reconstruction rejects the key); its documented default is the spec's
    assert GenerationSpec().pr_k == cfg.GENERATION_DEFAULTS["pr_k"]
    assert f"Default {GenerationSpec().pr_k}" in generation["pr_k"]["description"]


def test_tokenizer_and_model_metric_defaults_equal_the_schema(schema):
    from diffusability.latent_metrics.spec import MODEL_METRICS_DEFAULTS as MODEL_DEFAULTS, TOKENIZER_METRICS_DEFAULTS as TOKENIZER_DEFAULTS

    metrics = schema["properties"]["metrics"]["properties"]
    for section, defaults, families in (("tokenizer", TOKENIZER_DEFAULTS, ("equivariance", "ifid")),
                                        ("model", MODEL_DEFAULTS, ("fisher",))):
        properties = metrics[section]["properties"]
        assert disagreements(properties, defaults, skip=families) == [], section
        for family in families:
            assert disagreements(properties[family]["properties"], defaults[family]) == [], f"{section}.{family}"


def test_a_validated_config_resolves_like_the_commands(schema):
    """The whole path: what validation writes for the network-metric sections is what the commands use."""
    from diffusability.latent_metrics.spec import MODEL_METRICS_DEFAULTS as MODEL_DEFAULTS, TOKENIZER_METRICS_DEFAULTS as TOKENIZER_DEFAULTS

    config = minimal_config()
    tokenizer = cfg.tokenizer_metrics_spec(config)
    assert {k: tokenizer[k] for k in TOKENIZER_DEFAULTS} == TOKENIZER_DEFAULTS
    model = cfg.model_metrics_spec(config)
    assert {k: model[k] for k in MODEL_DEFAULTS} == MODEL_DEFAULTS
