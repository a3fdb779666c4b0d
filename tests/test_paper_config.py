"""config/paper.yaml, the full study of the target paper: it validates, has the paper's family sizes
(43 conv-f16d32, 22 conv-f16d64, 21 trans-f16d32) and cluster settings, its tokenizers and backbones
are accepted by the training code with the architectures of the paper presets, and (slow) the
dry run plans exactly the jobs the study implies.

Expected values are typed from the paper (MODELS.md §0, §2.6) and the brief, never read back from
the file: the file is what is tested.
"""

from __future__ import annotations

import collections
import copy
import math

import pytest
import yaml

from diffusability import config as cfg
from diffusability.diffusion import transformer
from diffusability.diffusion.spec import DiffusionSpec
from diffusability.tokenizers.regularizers.eq import EquivarianceRegularizer
from diffusability.tokenizers.regularizers.lcr import LocalCorrelationRegularizer
from diffusability.tokenizers.regularizers.lmr import LatentMaskedReconstruction
from diffusability.tokenizers.regularizers.mae import MaskedEncoding
from diffusability.tokenizers.regularizers.repa import RepaAlignment
from diffusability.tokenizers.regularizers.vf import VisionFoundationLoss
from diffusability.tokenizers.spec import TokenizerSpec, paper_f16d32, paper_f16d64, paper_trans_f16d32
from workflow_helpers import planned_jobs

FAMILY_SIZES = {"conv-f16d32": 43, "conv-f16d64": 22, "trans-f16d32": 21}
NAME_PREFIX = {"conv-f16d32": "c32", "conv-f16d64": "c64", "trans-f16d32": "t32"}
PRESETS = {"conv-f16d32": paper_f16d32, "conv-f16d64": paper_f16d64, "trans-f16d32": paper_trans_f16d32}
# The VFMs of MODELS.md §0: CLIP-L, C-RADIO-B/L, DINOv2-B/L, DINOv3-B/L, LangPE-L, MAE-L, MoCov3-L,
# PE-B/L, SpatialPE-B/L, WebSSL-300m.
VFMS = {"clip-l", "cradio-b", "cradio-l", "dinov2-b", "dinov2-l", "dinov3-b", "dinov3-l", "langpe-l", "mae-l",
        "mocov3-l", "pe-b", "pe-l", "spatialpe-b", "spatialpe-l", "webssl-300m"}
ALIGNMENT = {"mcos", "mdms", "mcos+mdms", "repa"}
CLUSTERS = {"baseline", "repa", "mcos", "mdms", "mcos+mdms", "eq", "lcr", "lmr", "mae"}
LCR_SETTINGS = {(0.02, 0.75), (0.02, 0.60), (0.05, 0.70), (0.05, 0.90)}
LMR_SETTINGS = {(0.1, 0.10, 0.10), (0.1, 0.15, 0.15), (0.1, 0.05, 0.05)}
EPOCH_STEPS = math.ceil(16 * 1_281_167 / 256)  # 16 ImageNet epochs at batch 256
B_GRID = [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
# Table 2: family, depth, width, heads, steps, batch, lr, betas; the guidance scales sampled.
TABLE2 = {
    "sit-b": ("sit", 12, 768, 12, 400_000, 256, 1e-4, [0.9, 0.999], B_GRID, transformer.sit_b),
    "sit-xl": ("sit", 28, 1152, 16, 80_000, 256, 1e-4, [0.9, 0.999], [1.5, 2.0], transformer.sit_xl),
    "lightningdit-b": ("lightningdit", 12, 768, 12, 100_000, 1024, 2e-4, [0.9, 0.95], B_GRID,
                       transformer.lightningdit_b),
    "lightningdit-xl": ("lightningdit", 28, 1152, 16, 100_000, 1024, 2e-4, [0.9, 0.95], [1.5, 2.0],
                        transformer.lightningdit_xl),
}


@pytest.fixture(scope="module")
def raw(repo) -> dict:
    return yaml.safe_load((repo / "config" / "paper.yaml").read_text())


@pytest.fixture(scope="module")
def paper(raw) -> dict:
    return cfg.validate_config(raw)


def cluster(entry: dict) -> str:
    name = entry["regularizer"]["name"]
    return "baseline" if name == "none" else name


# ----------------------------------------------------------------------------- tokenizers

def test_family_sizes_are_the_papers(paper):
    families = collections.Counter(entry["family"] for entry in paper["tokenizers"].values())
    assert dict(families) == FAMILY_SIZES
    assert len(paper["tokenizers"]) == 86


def test_every_family_has_its_clusters(paper):
    by_family = collections.defaultdict(set)
    for entry in paper["tokenizers"].values():
        by_family[entry["family"]].add(cluster(entry))
    assert set().union(*by_family.values()) == CLUSTERS
    for family, clusters in by_family.items():
        expected = CLUSTERS if family == "trans-f16d32" else CLUSTERS - {"mae"}
        assert clusters == expected, family


def test_cluster_settings_match_the_paper_labels(paper):
    settings = collections.defaultdict(lambda: collections.defaultdict(set))
    for entry in paper["tokenizers"].values():
        reg = entry["regularizer"]
        key = {"eq": lambda: reg["variant"], "lcr": lambda: (reg["weight"], reg["threshold"]),
               "lmr": lambda: tuple(reg["mask_probabilities"]), "mae": lambda: reg["ratio"]}.get(reg["name"])
        if key:
            settings[entry["family"]][reg["name"]].add(key())
    for family in FAMILY_SIZES:
        assert settings[family]["eq"] == {"scale", "flip"}
        assert settings[family]["lcr"] == LCR_SETTINGS
        assert settings[family]["lmr"] == LMR_SETTINGS
    assert settings["trans-f16d32"]["mae"] == {0.3, 0.7}
    # lmr's p-a-b are the probabilities of mask ratios 0.25 / 0.5 / 0.75
    assert all(entry["regularizer"]["ratios"] == [0.25, 0.5, 0.75]
               for entry in paper["tokenizers"].values() if entry["regularizer"]["name"] == "lmr")


def test_names_encode_family_cluster_and_setting(paper):
    for name, entry in paper["tokenizers"].items():
        prefix, _, rest = name.partition("-")
        assert prefix == NAME_PREFIX[entry["family"]], name
        assert rest.split("-")[0] == cluster(entry), name
        reg = entry["regularizer"]
        if reg["name"] in ALIGNMENT:
            assert rest == f"{reg['name']}-{entry['teacher'].replace('-', '')}", name
        elif reg["name"] == "lcr":
            assert rest == f"lcr-w{reg['weight']:.2f}-th{reg['threshold']:.2f}", name
        elif reg["name"] == "lmr":
            a, b, c = reg["mask_probabilities"]
            assert rest == f"lmr-p{a:.1f}-{b:.2f}-{c:.2f}", name
        elif reg["name"] == "mae":
            assert rest == f"mae-r{reg['ratio']}", name
        elif reg["name"] == "eq":
            assert rest == f"eq-{reg['variant']}", name
        else:
            assert rest == "baseline", name


def test_alignment_tokenizers_name_a_vfm_and_only_they_do(paper):
    assert set(paper["teachers"]) == VFMS
    repa_teachers = set()
    for name, entry in paper["tokenizers"].items():
        if entry["regularizer"]["name"] in ALIGNMENT:
            assert entry["teacher"] in paper["teachers"], name
            if entry["regularizer"]["name"] == "repa" and entry["family"] == "conv-f16d32":
                repa_teachers.add(entry["teacher"])
        else:
            assert "teacher" not in entry, name
    assert repa_teachers == VFMS  # the conv-f16d32 repa cluster covers every VFM


def test_architectures_are_the_paper_presets(paper):
    """Each tokenizer's training spec builds with the architecture of its family's preset."""
    for name, entry in paper["tokenizers"].items():
        # The training command does not take `teacher` (the rule passes the VFM as --teacher).
        spec_dict = {k: v for k, v in cfg.tokenizer_spec(paper, name).items() if k != "teacher"}
        spec = TokenizerSpec.from_dict(spec_dict)
        preset = PRESETS[entry["family"]]()
        assert spec.architecture_kwargs() == preset.architecture_kwargs(), name
        assert (spec.architecture, spec.latent_channels, cfg.downsample_factor(entry)) == (
            preset.architecture, preset.latent_channels, 16), name
        assert (spec.batch_size, spec.lr, spec.kl_weight, spec.disc_weight, spec.disc_start) == (
            256, 1e-4, 1e-6, 0.5, 5001), name
        assert spec.steps == EPOCH_STEPS, name


def test_regularizer_parameters_are_accepted_by_the_code(paper):
    classes = {"repa": RepaAlignment, "eq": EquivarianceRegularizer, "lcr": LocalCorrelationRegularizer,
               "lmr": LatentMaskedReconstruction, "mae": MaskedEncoding}
    for name, entry in paper["tokenizers"].items():
        reg = dict(entry["regularizer"])
        kind = reg.pop("name")
        if kind == "none":
            assert not reg, name
        elif kind in ("mcos", "mdms", "mcos+mdms"):
            VisionFoundationLoss.resolve_params(reg, kind)
        else:
            classes[kind].resolve_params(reg)


def test_teacher_key_has_no_default(repo):
    """A schema default would change every tokenizer's params (a full rerun): the embedded default
    must validate to the same tokenizer specs with no `teacher` and no `teachers` written in."""
    default = cfg.validate_config(yaml.safe_load((repo / "config" / "config.yaml").read_text()))
    assert "teachers" not in default
    assert all("teacher" not in cfg.tokenizer_spec(default, name) for name in default["tokenizers"])


def test_unknown_teacher_name_is_rejected_by_the_schema(raw):
    bad = copy.deepcopy(raw)
    bad["tokenizers"]["c32-repa-dinov2l"]["teacher"] = "dino v2"
    with pytest.raises(Exception, match="teacher"):
        cfg.validate_config(bad)


# ----------------------------------------------------------------------------- diffusion and evaluation

def test_backbones_are_table_2(paper):
    assert set(paper["backbones"]) == set(TABLE2)
    for bb, (family, depth, width, heads, steps, batch, lr, betas, scales, factory) in TABLE2.items():
        entry = paper["backbones"][bb]
        assert (entry["family"], entry["depth"], entry["width"], entry["heads"]) == (family, depth, width, heads)
        assert (entry["steps"], entry["batch_size"], entry["lr"], entry["betas"]) == (steps, batch, lr, betas)
        assert entry["ema_decay"] == 0.9999 and entry["qk_norm"] is True
        assert (entry.get("cfg_scales") or paper["sampling"]["cfg_scales"]) == scales
        spec = DiffusionSpec.from_dict(cfg.backbone_spec(paper, "c32-baseline", bb), source=bb)
        arch = factory(in_channels=32)
        for key in ("depth", "width", "heads", "patch_size", "pos_embed", "norm", "mlp", "qk_norm"):
            assert getattr(spec, key) == getattr(arch, key), (bb, key)
        expected_law = "uniform" if family == "sit" else "logit_normal"
        assert (spec.time_sampling, spec.loss) == (expected_law, "mse" if family == "sit" else "mse+cosine")


def test_sampling_data_and_metrics_are_the_papers(paper):
    sampling = paper["sampling"]
    assert (sampling["num_steps"], sampling["num_samples"], sampling["cfg_scales"]) == (50, 50_000, B_GRID)
    assert sampling["guidance_channels"] == "all" and sampling["untrained_baseline"] is False
    data = paper["data"]
    assert (data["source"], data["image_size"], data["n_classes"]) == ("imagenet", 256, 1000)
    assert {"train_dir", "val_dir", "masks_dir"} <= set(data["imagenet"])
    assert set(paper["metrics"]["enabled"]) == {"viv", "lnc", "lds", "cds", "srss", "sec", "uniformity"}
    assert paper["metrics"]["params"]["srss"] == {"min_fg": 64, "min_bg": 64}
    assert paper["metrics"]["params"]["lnc"] == {"k": 5}
    # 001's Rotate/Scale equivariance and iFID perspectives; FI/FIR (seed 002) and the probe are not 001's
    assert paper["metrics"]["tokenizer"]["enabled"] == ["equivariance", "ifid"]
    assert paper["metrics"]["model"]["enabled"] == []
    assert cfg.reference_spec(paper)["feature_network"] == "inception"


# ----------------------------------------------------------------------------- the dry run

def paper_in_workdir(repo, work):
    """config/paper.yaml as shipped, its /path/to/ placeholders pointed at empty stand-ins in ``work``."""
    root = work / "stand-ins"
    text = (repo / "config" / "paper.yaml").read_text().replace("/path/to/", f"{root}/")
    (work / "config" / "paper.yaml").write_text(text)
    config = yaml.safe_load(text)
    imagenet = config["data"]["imagenet"]
    for key in ("train_dir", "val_dir", "masks_dir"):
        (work / imagenet[key]).mkdir(parents=True)
    (work / imagenet["mask_categories"]).parent.mkdir(parents=True, exist_ok=True)
    (work / imagenet["mask_categories"]).write_text("n01440764\n")
    for key in ("inception_weights", "reference_statistics"):
        (work / config["generation"][key]).parent.mkdir(parents=True, exist_ok=True)
        (work / config["generation"][key]).write_bytes(b"placeholder: a dry run never reads it")
    return config


@pytest.mark.slow
def test_dry_run_plans_the_whole_study(repo, snakemake_exe, workdir_factory):
    """The jobs of 86 tokenizers × (SiT-B 7 + SiT-XL 2 + LightningDiT-B 7 + LightningDiT-XL 2 scales)."""
    work = workdir_factory(yaml.safe_load((repo / "config" / "config.yaml").read_text()), name="paper")
    paper_in_workdir(repo, work)
    counts = planned_jobs(snakemake_exe, work, "--configfile", "config/paper.yaml", "--replace-workflow-config")
    tokenizers, backbones, samples_per_tokenizer = 43 + 22 + 21, 4, 7 + 2 + 7 + 2
    expected = {
        "imagenet_manifest": 2, "imagenet_shards": 2, "train_teacher": 1, "reference_stats": 1,
        "train_tokenizer": tokenizers, "reconstruction": tokenizers, "encode": tokenizers,
        "latent_metrics": tokenizers, "tokenizer_metrics": tokenizers, "train_diffusion": tokenizers * backbones,
        "sample": tokenizers * samples_per_tokenizer, "generation_metrics": tokenizers * samples_per_tokenizer,
        "aggregate": 1, "correlate": 1, "figures": 1, "summary": 1, "all": 1,
    }
    assert counts == expected
    assert sum(counts.values()) == 3881
