# Generation metrics of every sample set against the validation images (domain network).


rule generation_metrics:
    input:
        samples=layout.samples_file("{tok}", "{bb}", "{cfg}"),
        val=layout.data_split("val"),
        teacher=layout.teacher_file("model.safetensors"),
    output:
        layout.generation_rows("{tok}", "{bb}", "{cfg}"),
    params:
        spec=as_arg(cfg.generation_spec(config)),
        teacher=lambda wc, input: str(Path(input.teacher).parent),
    log:
        "logs/generation_metrics/{tok}/{bb}/cfg{cfg}.log",
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} generation-metrics --samples {input.samples} "
        "--reference {input.val} --feature-net {params.teacher} --spec {params.spec} --out {output} > {log} 2>&1"


rule untrained_generation_metrics:
    input:
        samples=layout.untrained_samples_file("{tok}", "{bb}"),
        val=layout.data_split("val"),
        teacher=layout.teacher_file("model.safetensors"),
    output:
        layout.untrained_generation_rows("{tok}", "{bb}"),
    params:
        spec=as_arg(cfg.generation_spec(config)),
        teacher=lambda wc, input: str(Path(input.teacher).parent),
    log:
        "logs/generation_metrics/{tok}/{bb}/untrained.log",
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} generation-metrics --samples {input.samples} "
        "--reference {input.val} --feature-net {params.teacher} --spec {params.spec} --out {output} > {log} 2>&1"


rule trajectory_metrics:
    input:
        trajectories=layout.trajectories_file("{tok}", "{bb}", "{cfg}"),
        code=code("metrics/trajectory.py"),
    output:
        layout.trajectory_rows("{tok}", "{bb}", "{cfg}"),
    log:
        "logs/trajectory_metrics/{tok}/{bb}/cfg{cfg}.log",
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} trajectory-metrics --trajectories {input.trajectories} "
        "--out {output} > {log} 2>&1"
