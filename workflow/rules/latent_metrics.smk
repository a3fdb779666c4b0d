# Proxy metrics of each tokenizer: on the normalised validation latents (latent_metrics), with the
# tokenizer's encoder/decoder (tokenizer_metrics: equivariance, iFID, Fisher geometry) and with each trained diffusion
# model (model_metrics: FI/FIR from its score). The last two run only when `metrics.tokenizer.enabled`
# / `metrics.model.enabled` name something; their rows join the metrics table in `aggregate`.

TOKENIZER_METRICS = bool(config["metrics"]["tokenizer"]["enabled"])
MODEL_METRICS = bool(config["metrics"]["model"]["enabled"])
# iFID's features (metrics.tokenizer.ifid.feature_net): the FID Inception of the generation metrics
# (REFERENCE and inception_args() in common.smk), or the domain net; neither when iFID is off.
IFID = "ifid" in config["metrics"]["tokenizer"]["enabled"]
IFID_INCEPTION = cfg.ifid_uses_inception(config)
# Where the metric commands compute. The config has no device key (no stage has one): `auto` is the
# GPU when the job was given one (cluster/config.yaml gives these rules a GPU), else the CPU.
METRICS_DEVICE = "auto"


def latent_metric_inputs(wildcards):
    """val latents and stats; the train latents only when a metric needs them (the linear probe)."""
    inputs = {
        "val": layout.latents_file(wildcards.tok, "val"),
        "stats": layout.latents_file(wildcards.tok, "stats"),
    }
    if cfg.metrics_need_train_latents(config):
        inputs["train"] = layout.latents_file(wildcards.tok, "train")
    return inputs


def network_metric_rows():
    """The tokenizer_metrics and model_metrics outputs the aggregation gathers ([] when switched off)."""
    tokenizer = expand(layout.tokenizer_metric_rows("{tok}"), tok=TOKENIZERS) if TOKENIZER_METRICS else []
    model = expand(layout.model_metric_rows("{tok}", "{bb}"), tok=TOKENIZERS, bb=BACKBONES) if MODEL_METRICS else []
    return {"tokenizer_metrics": tokenizer, "model_metrics": model}


def tokenizer_metric_inputs(wildcards):
    """The tokenizer, the val split, its latents and iFID's feature network (Inception weights or domain net)."""
    inputs = {
        "model": layout.tokenizer_file(wildcards.tok, "model.safetensors"),
        "val": data_split("val"),
        "latents": [layout.latents_file(wildcards.tok, name) for name in ("train", "val", "stats")],
    }
    if IFID_INCEPTION:
        inputs["inception"] = REFERENCE["inception_weights"]
    elif IFID:
        inputs["teacher"] = layout.teacher_file("model.safetensors")
    return inputs


def ifid_feature_args(wildcards, input):
    """--inception-weights [--inception-sha256] or --feature-net DIR: iFID's network ("" without iFID)."""
    if IFID_INCEPTION:
        return inception_args()
    if IFID:
        return f"--feature-net {shlex.quote(str(Path(input.teacher).parent))}"
    return ""


rule latent_metrics:
    input:
        unpack(latent_metric_inputs),
    output:
        layout.latent_metric_rows("{tok}"),
    params:
        code=code_identity("latent-metrics"),
        spec=as_arg(cfg.metrics_spec(config)),
        latents=lambda wc, input: str(Path(input.val).parent),
    log:
        layout.log_file("latent_metrics", "{tok}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} latent-metrics --latents {params.latents:q} "
        "--spec {params.spec} --device {METRICS_DEVICE} --out {output:q} > {log:q} 2>&1"


rule tokenizer_metrics:
    input:
        unpack(tokenizer_metric_inputs),
    output:
        layout.tokenizer_metric_rows("{tok}"),
    params:
        # the Fisher-geometry module runs only when that family is on: otherwise its edits rerun nothing here
        code=code_identity("tokenizer-metrics", () if "fisher_geometry" in config["metrics"]["tokenizer"]["enabled"]
                           else ("diffusability.metrics.fisher_geometry",)),
        spec=as_arg(cfg.tokenizer_metrics_spec(config)),
        tokenizer=lambda wc, input: str(Path(input.model).parent),
        latents=lambda wc, input: str(Path(input.latents[0]).parent),
        features=ifid_feature_args,
    log:
        layout.log_file("tokenizer_metrics", "{tok}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} tokenizer-metrics --tokenizer {params.tokenizer:q} "
        "--data {input.val:q} --latents {params.latents:q} {params.features} --spec {params.spec} "
        "--device {METRICS_DEVICE} --out {output:q} > {log:q} 2>&1"


rule model_metrics:
    input:
        ema=layout.diffusion_file("{tok}", "{bb}", "ema.safetensors"),
        config=layout.diffusion_file("{tok}", "{bb}", "config.json"),
        val=layout.latents_file("{tok}", "val"),
        stats=layout.latents_file("{tok}", "stats"),
    output:
        layout.model_metric_rows("{tok}", "{bb}"),
    params:
        code=code_identity("model-metrics"),
        spec=as_arg(cfg.model_metrics_spec(config)),
        diffusion=lambda wc, input: str(Path(input.ema).parent),
        latents=lambda wc, input: str(Path(input.val).parent),
    log:
        layout.log_file("model_metrics", "{tok}", "{bb}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} model-metrics --diffusion {params.diffusion:q} "
        "--latents {params.latents:q} --spec {params.spec} --out {output:q} > {log:q} 2>&1"
