# FDr (generation.representations, unset by default): reference statistics per representation space,
# cached once from the reference images of `reference_stats`, and the rows fd_<space> / fdr_<space> /
# fdr6 of every sample set, which the aggregate reads with its generation rows. The Inception space
# is the sample set's gFID row (generation.feature_network: inception). Code: diffusability/representation/.

try:
    REPRESENTATIONS = cfg.representation_models(config)
except DiffusabilityError as exc:
    raise WorkflowError(str(exc)) from None

REPRESENTATION_ROWS = [layout.representation_rows(*job) for job in SAMPLE_JOBS] if REPRESENTATIONS else []


def representation_inputs(wildcards):
    """Samples, the FDr code, each space's model config and reference statistics, and the gFID rows with the
    Inception."""
    inputs = {"samples": layout.samples_file(wildcards.tok, wildcards.bb, wildcards.cfg, wildcards.seed)}
    for space, folder in REPRESENTATIONS.items():
        inputs[f"model_{space}"], inputs[f"stats_{space}"] = f"{folder}/config.json", layout.representation_stats(space)
    if INCEPTION:
        inputs["inception_rows"] = layout.generation_rows(wildcards.tok, wildcards.bb, wildcards.cfg, wildcards.seed)
    return inputs


def representation_args(wildcards, input):
    """--space NAME MODEL STATS per space [--inception-rows ROWS]."""
    args = [f"--space {space} {shlex.quote(folder)} {shlex.quote(input['stats_' + space])}"
            for space, folder in REPRESENTATIONS.items()]
    if INCEPTION:
        args.append(f"--inception-rows {shlex.quote(input.inception_rows)}")
    return " ".join(args)


if REPRESENTATIONS:

    rule representation_reference_stats:
        input:
            images=REFERENCE["reference_statistics"] or data_split("val"),
            model=lambda wc: f"{REPRESENTATIONS[wc.space]}/config.json",
        output:
            layout.representation_stats("{space}"),
        cache: CACHE
        params:
            space=lambda wc: wc.space,
            code=code_identity("representation-stats"),
            model=lambda wc: shlex.quote(REPRESENTATIONS[wc.space]),
            batch=REFERENCE["batch_size"],
        wildcard_constraints:
            space="|".join(REPRESENTATIONS),
        log:
            layout.log_file("representation_reference_stats", "{space}"),
        threads: THREADS
        shell:
            "OMP_NUM_THREADS={threads} {DIFFUSABILITY} representation-stats --images {input.images:q} "
            "--space {params.space} --model {params.model} --batch-size {params.batch} --out {output:q} > {log:q} 2>&1"

    rule representation_metrics:
        input:
            unpack(representation_inputs),
        output:
            layout.representation_rows("{tok}", "{bb}", "{cfg}", "{seed}"),
        params:
            code=code_identity("representation-metrics"),
            spec=as_arg({"batch_size": REFERENCE["batch_size"]}),
            spaces=representation_args,
        log:
            layout.log_file("representation_metrics", "{tok}", "{bb}", "seed{seed}", "cfg{cfg}"),
        threads: THREADS
        shell:
            "OMP_NUM_THREADS={threads} {DIFFUSABILITY} representation-metrics --samples {input.samples:q} "
            "{params.spaces} --spec {params.spec} --out {output:q} > {log:q} 2>&1"
