# Analysis: per-job rows → tables (Parquet with provenance) → correlations, regressions,
# figures and a readable summary. Only these rules rerun when a tokenizer is added.

from diffusability.analysis import figures as analysis_figures

# the directory the aggregation writes the tables to and the analysis steps read them from
TABLES_DIR = layout.tables_dir()


def tokenizer_table_spec():
    return {
        tok: {
            # None: the family is named from the trained/imported tokenizer's own config.json
            # (a pretrained entry's architecture and latent shape come from its checkpoint).
            "family": entry.get("family"),
            "architecture": entry["architecture"],
            "regularizer": entry["regularizer"]["name"],
            "regularizer_params": {k: v for k, v in entry["regularizer"].items() if k != "name"},
            "kl_weight": entry["kl_weight"],
            "latent_channels": entry["latent_channels"],
            "downsample": cfg.downsample_factor(entry),
            # with latent_channels and downsample, the latent shape `diffusability predict` checks against
            "image_size": config["data"]["image_size"],
        }
        for tok, entry in sorted(config["tokenizers"].items())
    }


def untrained_rows():
    if not config["sampling"]["untrained_baseline"]:
        return []
    return expand(layout.untrained_generation_rows("{tok}", "{bb}"), tok=TOKENIZERS, bb=BACKBONES)


rule aggregate:
    input:
        reconstruction=expand(layout.reconstruction_rows("{tok}"), tok=TOKENIZERS),
        metrics=expand(layout.latent_metric_rows("{tok}"), tok=TOKENIZERS),
        tokenizer_configs=expand(layout.tokenizer_file("{tok}", "config.json"), tok=TOKENIZERS),
        tokenizer_metrics=network_metric_rows()["tokenizer_metrics"],
        model_metrics=network_metric_rows()["model_metrics"],
        generation=[layout.generation_rows(*job) for job in SAMPLE_JOBS] + REPRESENTATION_ROWS,
        trajectory=[layout.trajectory_rows(*job) for job in SAMPLE_JOBS] if RECORD_TRAJECTORIES else [],
        untrained=untrained_rows(),
    output:
        tokenizers=layout.table("tokenizers"),
        reconstruction=layout.table("reconstruction"),
        metrics=layout.table("metrics"),
        generation=layout.table("generation"),
    params:
        code=code_identity("aggregate"),
        spec=as_arg({"tokenizers": tokenizer_table_spec(), "config": config}),
    log:
        layout.log_file("aggregate"),
    shell:
        "{DIFFUSABILITY} aggregate --spec {params.spec} --tokenizer-configs {input.tokenizer_configs:q} "
        "--reconstruction {input.reconstruction:q} "
        "--metrics {input.metrics:q} --tokenizer-metrics {input.tokenizer_metrics:q} "
        "--model-metrics {input.model_metrics:q} --generation {input.generation:q} --trajectory {input.trajectory:q} "
        "--untrained {input.untrained:q} --out-dir {TABLES_DIR:q} > {log:q} 2>&1"


# The correlate step also writes the tables of the study's figures (docs/analysis.md): perspectives (Figs. 4-6),
# perspective_pairs (Fig. 8), guidance_optima and guidance_correlations (Figs. 7, 25), seeds (seed noise).
ANALYSIS_TABLE_ARGS = " ".join(f"--out-{name.replace('_', '-')} {{output.{name}:q}}" for name in layout.ANALYSIS_TABLES)


rule correlate:
    input:
        tokenizers=layout.table("tokenizers"),
        reconstruction=layout.table("reconstruction"),
        metrics=layout.table("metrics"),
        generation=layout.table("generation"),
    output:
        correlations=layout.table("correlations"),
        regressions=layout.table("regressions"),
        **{name: layout.table(name) for name in layout.ANALYSIS_TABLES},
    params:
        code=code_identity("correlate"),
        spec=as_arg(config["analysis"]),
    log:
        layout.log_file("correlate"),
    shell:
        "{DIFFUSABILITY} correlate --tables {TABLES_DIR:q} --spec {params.spec} "
        "--out-correlations {output.correlations:q} --out-regressions {output.regressions:q} "
        + ANALYSIS_TABLE_ARGS
        + " > {log:q} 2>&1"


rule predictions:
    input:
        tokenizers=layout.table("tokenizers"),
        metrics=layout.table("metrics"),
        generation=layout.table("generation"),
    output:
        predictions=layout.table("predictions"),
        scores=layout.table("prediction_scores"),
        figure=report(layout.prediction_figure(), caption="../report/predictions.rst", category="Figures"),
    params:
        code=code_identity("predictions"),
        spec=as_arg(config["analysis"]),
    log:
        layout.log_file("predictions"),
    shell:
        "{DIFFUSABILITY} predictions --tables {TABLES_DIR:q} --spec {params.spec} "
        "--out-predictions {output.predictions:q} --out-scores {output.scores:q} --out-figure {output.figure:q} "
        "> {log:q} 2>&1"


rule figures:
    input:
        tables=[layout.table(name) for name in layout.TABLES],
    output:
        report(
            directory(layout.figures_dir()),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        code=code_identity("figures"),
        spec=as_arg(config["analysis"]),
        # (file-name prefix, caption) pairs, longest prefix first: figures.rst gives each figure its caption
        captions=analysis_figures.caption_list(),
    log:
        layout.log_file("figures"),
    # the last job of a run, alone on the machine: its figures are drawn in parallel (capped at --cores)
    threads: 2
    shell:
        "OMP_NUM_THREADS=1 {DIFFUSABILITY} figures --tables {TABLES_DIR:q} --spec {params.spec} "
        "--out-dir {output:q} --jobs {threads} > {log:q} 2>&1"


rule summary:
    input:
        tables=[layout.table(name) for name in layout.TABLES],
    output:
        report(layout.report(), caption="../report/summary.rst", category="Summary"),
    params:
        code=code_identity("summarize"),
        spec=as_arg(config["analysis"]),
    log:
        layout.log_file("summary"),
    shell:
        "{DIFFUSABILITY} summarize --tables {TABLES_DIR:q} --spec {params.spec} --out {output:q} > {log:q} 2>&1 "
        "&& cat {output:q}"
