# Generation metrics of every sample set against the reference images.
#
# generation.feature_network: domain (default) — the teacher CNN against the val split;
# inception — the ADM suite on the FID Inception-v3 (gFID as `fd`, `sfid`, `is` when the weights
# have the softmax layer, precision/recall) against cached reference statistics: those of the val
# split, or ADM's VIRTUAL_imagenet256_labeled.npz (generation.reference_statistics), both cached
# once by `reference_stats` in results/evaluation/reference_stats.npz.

# REFERENCE, INCEPTION, REFERENCE_STATS and inception_args() are defined in common.smk (the
# reconstruction rule measures rFID with the same network).


def generation_inputs(samples):
    """Inputs of a generation-metrics job: the samples plus the feature net and its reference."""
    if INCEPTION:
        return {"samples": samples, "reference": REFERENCE_STATS, "weights": REFERENCE["inception_weights"]}
    return {"samples": samples, "val": data_split("val"), "teacher": layout.teacher_file("model.safetensors")}


def generation_args(wildcards, input):
    """--feature-net and reference arguments of a generation-metrics job."""
    if INCEPTION:
        return f"--feature-net inception {inception_args()} --reference-stats {shlex.quote(input.reference)}"
    return f"--feature-net {shlex.quote(str(Path(input.teacher).parent))} --reference {shlex.quote(input.val)}"


if INCEPTION:

    rule reference_stats:
        input:
            images=REFERENCE["reference_statistics"] or data_split("val"),
            weights=REFERENCE["inception_weights"],
        output:
            REFERENCE_STATS,
        cache: CACHE
        params:
            code=code_identity("reference-stats"),
            net=inception_args(),
            batch=REFERENCE["batch_size"],
            adopt=f"--statistics-from {shlex.quote(REFERENCE['reference_statistics'])}"
            if REFERENCE["reference_statistics"] else "",
        log:
            layout.log_file("reference_stats"),
        threads: THREADS
        shell:
            "OMP_NUM_THREADS={threads} {DIFFUSABILITY} reference-stats --images {input.images:q} --feature-net inception "
            "{params.net} {params.adopt} --keep-features --batch-size {params.batch} --out {output:q} > {log:q} 2>&1"


rule generation_metrics:
    input:
        unpack(lambda wc: generation_inputs(layout.samples_file(wc.tok, wc.bb, wc.cfg, wc.seed))),
    output:
        layout.generation_rows("{tok}", "{bb}", "{cfg}", "{seed}"),
    params:
        code=code_identity("generation-metrics"),
        spec=as_arg(cfg.generation_metrics_spec(config)),
        net=generation_args,
    log:
        layout.log_file("generation_metrics", "{tok}", "{bb}", "seed{seed}", "cfg{cfg}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} generation-metrics --samples {input.samples:q} "
        "{params.net} --spec {params.spec} --out {output:q} > {log:q} 2>&1"


rule untrained_generation_metrics:
    input:
        unpack(lambda wc: generation_inputs(layout.untrained_samples_file(wc.tok, wc.bb))),
    output:
        layout.untrained_generation_rows("{tok}", "{bb}"),
    params:
        code=code_identity("generation-metrics"),
        spec=as_arg(cfg.generation_metrics_spec(config)),
        net=generation_args,
    log:
        layout.log_file("generation_metrics", "{tok}", "{bb}", "untrained"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} generation-metrics --samples {input.samples:q} "
        "{params.net} --spec {params.spec} --out {output:q} > {log:q} 2>&1"


rule trajectory_metrics:
    input:
        trajectories=layout.trajectories_file("{tok}", "{bb}", "{cfg}", "{seed}"),
    output:
        layout.trajectory_rows("{tok}", "{bb}", "{cfg}", "{seed}"),
    params:
        code=code_identity("trajectory-metrics"),
    log:
        layout.log_file("trajectory_metrics", "{tok}", "{bb}", "seed{seed}", "cfg{cfg}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} trajectory-metrics --trajectories {input.trajectories:q} "
        "--out {output:q} > {log:q} 2>&1"
