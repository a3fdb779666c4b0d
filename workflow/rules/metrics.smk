# Latent proxy metrics of each tokenizer, on the normalised validation latents.


rule latent_metrics:
    input:
        val=layout.latents_file("{tok}", "val"),
        stats=layout.latents_file("{tok}", "stats"),
        code=code("metrics/registry.py", "metrics/normalization.py", "metrics/viv.py", "metrics/semantic.py",
                  "metrics/spatial.py", "metrics/spectral.py", "metrics/uniformity.py"),
    output:
        layout.latent_metric_rows("{tok}"),
    params:
        spec=as_arg(cfg.metrics_spec(config)),
        latents=lambda wc, input: str(Path(input.val).parent),
    log:
        "logs/latent_metrics/{tok}.log",
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} latent-metrics --latents {params.latents} "
        "--spec {params.spec} --out {output} > {log} 2>&1"
