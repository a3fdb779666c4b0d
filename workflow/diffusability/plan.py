"""``diffusability plan``: the jobs and GPU-hours of a study, per rule, before anything runs.

The job counts are computed from the validated config, with the same rules the workflow's DAG
follows (one ``train_tokenizer`` per trained tokenizer, one ``train_diffusion`` per tokenizer, backbone
and seed repeat, one ``sample`` per tokenizer, backbone, guidance scale and seed repeat, ...); the
tests compare them, rule for rule, with Snakemake's own dry run. GPUs per job come from
the cluster profile (``set-resources: <rule>: gpu``). GPU-hours are estimated, per job, as

    images processed × FLOP per image / effective FLOP/s of one GPU,

so they are H100/H800-class GPU-hours: what the study costs at the throughput published for the
paper's own backbones, not a measurement of this code.

Published throughput figures (the anchors)
------------------------------------------
The paper ("Diffusing in the Right Space") gives no compute budget or throughput. Two public
figures calibrate the effective FLOP/s of one GPU:

=========================  =====================================================  ============  ==============
precision                  published figure                                       img/s/GPU     effective FLOP/s
=========================  =====================================================  ============  ==============
bf16 (autocast)            LightningDiT README (hustvl/LightningDiT): XL/1, 64    285           3 × 237 GFLOP ×
                           ImageNet epochs "in about 10 hours with 8 × H800"                    285 ≈ 2.0e14
                           (64 · 1,281,167 images / 80 GPU-h)
fp32 / TF32                DiT issue #22 (facebookresearch/DiT, W. Peebles):      25.9          3 × 237 GFLOP ×
                           DiT-XL/2, batch 256, 0.81 steps/s on 8 × A100 with                   25.9 ≈ 1.8e13 on
                           TF32 — 11.8 % of the A100's 156 TFLOP/s TF32 peak                    A100; the same
                                                                                                fraction of the
                                                                                                H100's 495 TFLOP/s
                                                                                                ≈ 6.0e13
=========================  =====================================================  ============  ==============

FLOP per image (forward; multiply-add = 2 FLOP)
-----------------------------------------------
- Diffusion transformer on N tokens: ``depth · (24·w²·N + 4·N²·w + 12·w²)`` (attention projections,
  4w MLP — SwiGLU at 2/3·4w keeps the same FLOP —, attention scores, adaLN). At N = 256 this is
  46.0 GFLOP for B and 237 GFLOP for XL: 2 × the 23.0 and 118.6 "Gflops" (multiply-adds) of DiT-B/2
  and DiT-XL/2 in the DiT paper's Table 4 (Peebles & Xie 2023), which SiT's paper reuses; a /1 model
  on the 16×16 latent has the tokens of a /2 model on 32×32.
- Conv VAE (the paper's f16d32/f16d64): encoder 137.9, decoder 252.2 GFLOP at 256 px, counted with
  ``torch.utils.flop_counter`` on ``tokenizers.conv_vae`` at the ``paper_f16d32`` preset; scaled by
  (base_channels / 128)² · (image_size / 256)² for other channel plans (an estimate).
- ViT tokenizer: the transformer formula above (no adaLN) for encoder and decoder each (46.2 GFLOP
  at ViT-B/16, 256 px, by the same counter).
- LPIPS-VGG16: 40.1 GFLOP per image at 256 px (``torch.utils.flop_counter`` on
  ``tokenizers.lpips.vgg16_features``; torchvision lists VGG16 at 15.5 G multiply-adds at 224 px);
  the loss runs it on both images and back-propagates through one: 4 × 40.1 GFLOP per training image.
- PatchGAN (3 layers, width 64) ≈ 6.3 GFLOP forward at 256 px, counted by hand from its layers;
  discriminator and generator steps ≈ 9 forward-equivalents per training image.
- VFM teacher (alignment clusters): ViT-L/14 at 224 px (257 tokens), 162 GFLOP by the transformer
  formula — an upper bound for the B-size teachers.
- Training = 3 × forward (backward ≈ 2 × forward). An adaptive regularizer weight (``adaptive:
  true``) adds one backward through the decoder (the gradient of the reconstruction loss at the
  encoder's last layer): 2 × decoder forward.
- FID Inception-v3: 11.4 GFLOP at 299 px (torchvision's model table: 5.71 G multiply-adds); iFID in
  its features (``metrics.tokenizer.ifid.feature_net: inception``) runs it on every query image and
  every decoded midpoint.
- FDr spaces: ConvNeXt-V2-Base at 224 px 30.8 GFLOP (15.4 G multiply-adds, the ConvNeXt V2 paper,
  Woo et al. 2023); the ViTs by the transformer formula at their token counts (DINOv2-L/14 and
  CLIP-L/14 at 266 px: 362 tokens; MAE-L/16 at 224 px: 197 tokens; SigLIP2-so400m/16 at 224 px:
  196 tokens, width 1152, 27 blocks, MLP 4304).
- Sampling: ``num_steps`` network calls per image, twice the batch when the guidance scale is not 1,
  then one decoder pass; float32 (the sampler turns autocast off).

Not modelled (shown as "-"): the domain CNN (``train_teacher`` and the domain feature network),
the latent metrics, the model metrics and the trajectory metrics — minutes per job — and
regularizer passes other than the VFM forward and the adaptive-weight backward (EQ-VAE's
transformed pairs, MAE masking, ...).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .errors import DiffusabilityError

#: effective FLOP/s of one H100/H800-class GPU by training precision (see the module docstring)
EFFECTIVE_FLOPS = {"bf16": 2.0e14, "fp32": 6.0e13}

#: ImageNet-1k train images (``data.n_train: 0`` means all of them)
IMAGENET_TRAIN = 1_281_167
#: images of ADM's reference batch (VIRTUAL_imagenet256_labeled.npz), the reference images of the FDr statistics
ADM_REFERENCE_IMAGES = 10_000

CONV_ENCODER_FLOP = 137.9e9      # paper_f16d32 at 256 px (torch.utils.flop_counter)
CONV_DECODER_FLOP = 252.2e9
LPIPS_FLOP = 40.1e9              # VGG16 features at 256 px (torch.utils.flop_counter)
PATCHGAN_FLOP = 6.3e9            # 3-layer PatchGAN, width 64, at 256 px
INCEPTION_FLOP = 11.4e9          # FID Inception-v3 at 299 px (torchvision: 5.71 G multiply-adds)


def transformer_flop(depth: int, width: int, tokens: int, mlp: int | None = None, adaln: bool = False) -> float:
    """Forward FLOP of a ViT/DiT body on ``tokens`` tokens (multiply-add = 2 FLOP).

    Parameters
    ----------
    depth, width : int
        Blocks and hidden width.
    tokens : int
        Sequence length N.
    mlp : int, optional
        MLP hidden width (default 4·width; SwiGLU's 2/3·4·width with three matrices costs the same).
    adaln : bool
        Add the adaLN modulation (one width → 6·width linear per block and image), as in DiT/SiT.

    Returns
    -------
    float
        ``depth · (2·N·(4·w² + 2·w·mlp) + 4·N²·w [+ 12·w²])``.
    """
    mlp = 4 * width if mlp is None else mlp
    block = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
    return depth * (block + (12 * width * width if adaln else 0))


#: forward FLOP per image of the FDr representation spaces (see the module docstring)
REPRESENTATION_FLOP = {
    "convnext": 30.8e9,
    "dinov2": transformer_flop(24, 1024, 362),
    "mae": transformer_flop(24, 1024, 197),
    "siglip": transformer_flop(27, 1152, 196, mlp=4304),
    "clip": transformer_flop(24, 1024, 362),
}
VFM_FLOP = transformer_flop(24, 1024, 257)


@dataclass(frozen=True)
class RuleCost:
    """One row of the plan: a rule, its jobs, GPUs per job and estimated GPU-hours (None: not modelled)."""

    rule: str
    jobs: int
    gpus: int | None
    gpu_hours: float | None


# ----------------------------------------------------------------------------- job counts

def sample_jobs(config: dict) -> list[tuple[str, str, float, int]]:
    """Every (tokenizer, backbone, guidance scale, seed repeat) of the study, as the ``sample`` rule runs them."""
    grid = config["sampling"]["cfg_scales"]
    return [(tok, bb, scale, repeat) for tok in sorted(config["tokenizers"]) for bb in sorted(config["backbones"])
            for scale in (config["backbones"][bb].get("cfg_scales") or grid)
            for repeat in range(config.get("repeats", 1))]


def job_counts(config: dict) -> dict[str, int]:
    """{rule: jobs} of the whole study from scratch, from the validated ``config`` (rules without jobs left out)."""
    tokenizers, backbones = config["tokenizers"], config["backbones"]
    n_tok, n_pairs, n_samples = len(tokenizers), len(tokenizers) * len(backbones), len(sample_jobs(config))
    # a diffusion model per seed repeat; model metrics and untrained baselines once per pair (repeat 0 / no model)
    n_models = n_pairs * config.get("repeats", 1)
    pretrained = sum(1 for entry in tokenizers.values() if entry.get("pretrained"))
    generation, metrics, sampling = config["generation"], config["metrics"], config["sampling"]
    spaces = len(generation.get("representations") or {})
    counts = {
        **_data_counts(config),
        "train_teacher": 1,
        "reference_stats": int(generation.get("feature_network") == "inception"),
        "representation_reference_stats": spaces,
        "train_tokenizer": n_tok - pretrained, "import_tokenizer": pretrained,
        "reconstruction": n_tok, "encode": n_tok, "latent_metrics": n_tok,
        "tokenizer_metrics": n_tok if metrics["tokenizer"]["enabled"] else 0,
        "train_diffusion": n_models,
        "model_metrics": n_pairs if metrics["model"]["enabled"] else 0,
        "sample": n_samples, "generation_metrics": n_samples,
        "trajectory_metrics": n_samples if sampling["trajectories"] > 0 else 0,
        "representation_metrics": n_samples if spaces else 0,
        "sample_untrained": n_pairs if sampling["untrained_baseline"] else 0,
        "untrained_generation_metrics": n_pairs if sampling["untrained_baseline"] else 0,
        "aggregate": 1, "correlate": 1, "predictions": 1, "figures": 1, "summary": 1, "all": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


def _data_counts(config: dict) -> dict[str, int]:
    data = config["data"]
    if data["source"] != "imagenet":
        return {"prepare_data": 1}
    shards = (data.get("imagenet") or {}).get("storage", "memory") == "shards"
    return {"imagenet_manifest": 2, **({"imagenet_shards": 2} if shards else {"prepare_data": 1})}


# ----------------------------------------------------------------------------- FLOP per job

def _seconds(flop: float, precision: str | None) -> float:
    return flop / EFFECTIVE_FLOPS[precision or "fp32"]


def _n_train(config: dict) -> int:
    n_train = config["data"]["n_train"]
    return IMAGENET_TRAIN if config["data"]["source"] == "imagenet" and n_train in (0, None) else n_train


def tokenizer_flop(entry: dict, image_size: int) -> tuple[float, float]:
    """(encoder, decoder) forward FLOP per image of one tokenizer entry."""
    if entry["architecture"] == "vit":
        tokens = (image_size // entry["patch_size"]) ** 2
        body = transformer_flop(entry["vit_depth"], entry["vit_width"], tokens)
        return body, body
    scale = (entry["base_channels"] / 128) ** 2 * (image_size / 256) ** 2
    return CONV_ENCODER_FLOP * scale, CONV_DECODER_FLOP * scale


def backbone_flop(config: dict, bb: str) -> float:
    """Forward FLOP per image of backbone ``bb`` on the study's latent grid (patch size 1)."""
    entry = config["backbones"][bb]
    tokens = _latent_tokens(config)
    return transformer_flop(entry["depth"], entry["width"], tokens, adaln=True)


def _latent_tokens(config: dict) -> int:
    # every tokenizer of a study has one latent grid (the diffusion models are compared on it)
    from .workflow.config import downsample_factor

    factors = {downsample_factor(entry) for entry in config["tokenizers"].values()}
    return (config["data"]["image_size"] // min(factors)) ** 2


def _train_tokenizer(config: dict, name: str) -> float:
    entry, size = config["tokenizers"][name], config["data"]["image_size"]
    encoder, decoder = tokenizer_flop(entry, size)
    pixels = (size / 256) ** 2
    per_image = 3 * (encoder + decoder)
    if entry.get("perceptual") == "lpips":
        per_image += 4 * LPIPS_FLOP * pixels
    if entry.get("disc_weight", 0) > 0:
        per_image += 9 * PATCHGAN_FLOP * pixels
    if entry.get("teacher"):
        per_image += VFM_FLOP
    if entry["regularizer"].get("adaptive"):
        per_image += 2 * decoder
    return _seconds(entry["steps"] * entry["batch_size"] * per_image, entry.get("precision"))


def _reconstruction(config: dict, name: str) -> float:
    encoder, decoder = tokenizer_flop(config["tokenizers"][name], config["data"]["image_size"])
    per_image = encoder + decoder
    if config["generation"].get("feature_network") == "inception":
        per_image += INCEPTION_FLOP
    if config["generation"].get("lpips_weights"):
        per_image += 2 * LPIPS_FLOP
    return _seconds(config["data"]["n_val"] * per_image, "fp32")


def _encode(config: dict, name: str) -> float:
    encoder, _ = tokenizer_flop(config["tokenizers"][name], config["data"]["image_size"])
    images = _n_train(config) * (2 if config["encode"].get("flip") else 1) + config["data"]["n_val"]
    return _seconds(images * encoder, "fp32")


def _tokenizer_metrics(config: dict, name: str) -> float:
    from .workflow.config import ifid_feature_net

    tokenizer = config["metrics"]["tokenizer"]
    entry, data = config["tokenizers"][name], config["data"]
    encoder, decoder = tokenizer_flop(entry, data["image_size"])
    flop = 0.0
    if "equivariance" in tokenizer["enabled"]:
        eq = tokenizer.get("equivariance", {})
        transforms = len(eq.get("rotations", [1, 2, 3])) + len(eq.get("scales", [0.5, 0.75]))
        flop += (eq.get("max_images") or data["n_val"]) * (1 + transforms) * encoder
    if "ifid" in tokenizer["enabled"]:
        ifid = tokenizer.get("ifid", {})
        queries = ifid.get("max_queries") or data["n_val"]
        pool = data["n_val"] if ifid.get("pool") == "val" else (ifid.get("max_pool") or _n_train(config))
        latent_size = entry["latent_channels"] * _latent_tokens(config)
        flop += queries * decoder + 2.0 * queries * pool * latent_size  # decode + cosine neighbour search
        if ifid_feature_net(config) == "inception":  # the real images and the decoded midpoints (resized to 299)
            flop += 2 * queries * INCEPTION_FLOP
    return _seconds(flop, "fp32")


def _train_diffusion(config: dict, bb: str) -> float:
    entry = config["backbones"][bb]
    return _seconds(entry["steps"] * entry["batch_size"] * 3 * backbone_flop(config, bb), entry.get("precision"))


def _sample(config: dict, tok: str, bb: str, scale: float, repeat: int = 0) -> float:
    # every seed repeat costs the same: ``repeat`` only keeps the signature of :func:`sample_jobs`' tuples
    sampling = config["sampling"]
    _, decoder = tokenizer_flop(config["tokenizers"][tok], config["data"]["image_size"])
    calls = sampling["num_steps"] * (1 if scale == 1.0 else 2)
    return _seconds(sampling["num_samples"] * (calls * backbone_flop(config, bb) + decoder), "fp32")


def _feature_seconds(config: dict, images: int) -> float | None:
    if config["generation"].get("feature_network") != "inception":
        return None  # the domain CNN: not modelled
    return _seconds(images * INCEPTION_FLOP, "fp32")


def _representation_flop(config: dict) -> float:
    return sum(REPRESENTATION_FLOP[space] for space in config["generation"].get("representations") or {})


def _reference_images(config: dict) -> int:
    return ADM_REFERENCE_IMAGES if config["generation"].get("reference_statistics") else config["data"]["n_val"]


def gpu_hours(config: dict) -> dict[str, float | None]:
    """{rule: estimated GPU-hours of all its jobs} (None: not modelled); the rules of :func:`job_counts`."""
    tokenizers, samples = sorted(config["tokenizers"]), sample_jobs(config)
    trained = [name for name in tokenizers if not config["tokenizers"][name].get("pretrained")]
    pairs = [(tok, bb) for tok in tokenizers for bb in sorted(config["backbones"])]
    num_samples = config["sampling"]["num_samples"]
    per_sample = _feature_seconds(config, num_samples)
    seconds = {
        "train_tokenizer": sum(_train_tokenizer(config, name) for name in trained),
        "reconstruction": sum(_reconstruction(config, name) for name in tokenizers),
        "encode": sum(_encode(config, name) for name in tokenizers),
        "tokenizer_metrics": sum(_tokenizer_metrics(config, name) for name in tokenizers),
        "train_diffusion": sum(_train_diffusion(config, bb) for _, bb in pairs) * config.get("repeats", 1),
        "sample": sum(_sample(config, *job) for job in samples),
        "sample_untrained": sum(_sample(config, tok, bb, 1.0) for tok, bb in pairs),
        "generation_metrics": None if per_sample is None else per_sample * len(samples),
        "untrained_generation_metrics": None if per_sample is None else per_sample * len(pairs),
        "reference_stats": _feature_seconds(config, _reference_images(config)),
        "representation_metrics": _seconds(num_samples * _representation_flop(config), "fp32") * len(samples),
        "representation_reference_stats": _seconds(_reference_images(config) * _representation_flop(config), "fp32"),
    }
    # only the rules the study runs (e.g. no sample_untrained without untrained_baseline)
    runs = job_counts(config)
    return {rule: None if s is None else s / 3600 for rule, s in seconds.items() if rule in runs}


# ----------------------------------------------------------------------------- the plan

def gpus_per_job(profile: Path | None) -> dict[str, int]:
    """{rule: GPUs} of the cluster profile's ``set-resources`` ({} without a profile; rules not named: 0)."""
    if profile is None:
        return {}
    import yaml

    path = profile / "config.yaml" if profile.is_dir() else profile
    if not path.is_file():
        raise DiffusabilityError(f"--profile {profile}: no {path} (a Snakemake profile folder with config.yaml)")
    try:
        profile_config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DiffusabilityError(f"{path}: not valid YAML: {exc}") from None
    if profile_config is None:
        profile_config = {}
    if not isinstance(profile_config, dict):
        raise DiffusabilityError(f"{path}: expected a mapping of profile options, got {type(profile_config).__name__}")
    resources = profile_config.get("set-resources") or {}
    if not isinstance(resources, dict):
        raise DiffusabilityError(f"{path}: set-resources must map rules to resources, got {type(resources).__name__}")
    gpus = {}
    for rule, res in resources.items():
        if not isinstance(res or {}, dict):
            raise DiffusabilityError(f"{path}: set-resources: {rule}: expected a mapping of resources, got {res!r}")
        count = (res or {}).get("gpu", 0)
        if isinstance(count, bool) or not isinstance(count or 0, int) or (count or 0) < 0:
            raise DiffusabilityError(f"{path}: set-resources: {rule}: gpu must be a whole number >= 0, got {count!r}")
        gpus[rule] = int(count or 0)
    return gpus


def plan(config: dict, gpus: dict[str, int] | None) -> list[RuleCost]:
    """One :class:`RuleCost` per rule of the study, in workflow order.

    GPU-hours are None for rules that are not modelled, and 0 for rules that the profile runs
    without a GPU; ``gpus`` None (no profile) leaves the GPUs per job unknown.
    """
    hours = gpu_hours(config)
    rows = []
    for rule, jobs in job_counts(config).items():
        n_gpus = None if gpus is None else gpus.get(rule, 0)
        estimate = hours.get(rule)
        rows.append(RuleCost(rule, jobs, n_gpus, 0.0 if n_gpus == 0 and estimate is None else estimate))
    return rows


def _hours(hours: float) -> str:
    """GPU-hours with the digits that matter: 0, 0.0042, 3.7, 12,813."""
    if hours == 0:
        return "0"
    if hours < 1:
        return f"{hours:.2g}"
    return f"{hours:.1f}" if hours < 100 else f"{hours:,.0f}"


def format_plan(rows: list[RuleCost]) -> str:
    """The plan as a fixed-width table with a total row."""
    header = f"{'rule':<32}{'jobs':>8}{'GPUs/job':>10}{'GPU-h/job':>12}{'GPU-hours':>12}"
    lines = [header, "-" * len(header)]
    for row in rows:
        per_job = "-" if row.gpu_hours is None else _hours(row.gpu_hours / row.jobs)
        total = "-" if row.gpu_hours is None else _hours(row.gpu_hours)
        gpus = "?" if row.gpus is None else str(row.gpus)
        lines.append(f"{row.rule:<32}{row.jobs:>8,}{gpus:>10}{per_job:>12}{total:>12}")
    lines.append("-" * len(header))
    jobs = sum(row.jobs for row in rows)
    hours = sum(row.gpu_hours or 0.0 for row in rows)
    lines.append(f"{'total':<32}{jobs:>8,}{'':>10}{'':>12}{_hours(hours):>12}")
    lines.append(f"GPU-hours of H100/H800-class GPUs at published throughput (effective {EFFECTIVE_FLOPS['bf16']:.1e} "
                 f"FLOP/s in bf16, {EFFECTIVE_FLOPS['fp32']:.1e} in fp32); '-' = not modelled. Figures and sources: "
                 "the docstring of diffusability/plan.py.")
    cpu_only = [row.rule for row in rows if row.gpus == 0 and row.gpu_hours]
    if cpu_only:
        lines.append(f"The profile gives no GPU to {', '.join(cpu_only)}: their GPU-hours are GPU-class work "
                     "that would run on CPUs there.")
    return "\n".join(lines)


def load_study(configfile: Path) -> dict:
    """The validated config of ``configfile`` alone (a --configfile study replaces the embedded default)."""
    import yaml

    from .workflow.config import validate_config

    if not configfile.is_file():
        raise DiffusabilityError(f"--configfile {configfile}: no such file")
    try:
        raw = yaml.safe_load(configfile.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DiffusabilityError(f"{configfile}: not valid YAML: {exc}") from None
    try:
        return validate_config(raw)
    except DiffusabilityError as exc:
        raise DiffusabilityError(f"{configfile}: {exc}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="jobs, GPUs per job and estimated GPU-hours per rule of a study")
    p.add_argument("--configfile", type=Path, default=Path("config/config.yaml"),
                   help="the study (default: the embedded default, config/config.yaml)")
    p.add_argument("--profile", type=Path, default=None,
                   help="Snakemake profile folder whose set-resources give the GPUs per job (default: ./cluster "
                        "when it exists, else the GPUs per job are left unknown)")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    profile = args.profile if args.profile is not None else (Path("cluster") if Path("cluster").is_dir() else None)
    gpus = None if profile is None else gpus_per_job(profile)
    print(format_plan(plan(load_study(args.configfile), gpus)))
    return 0
