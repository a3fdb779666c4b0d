# Sampling: one job per guidance scale; Euler ODE with exactly num_steps updates, decoded images.
# A job given several GPUs (resources gpu > 1, set by the cluster profile) runs under torchrun:
# fixed index blocks of batch_size are dealt round-robin to the processes, so the images are the
# same bytes whatever the number of processes.


rule sample:
    input:
        ema=layout.diffusion_file("{tok}", "{bb}", "ema.safetensors", "{seed}"),
        tokenizer=layout.tokenizer_file("{tok}", "model.safetensors"),
        stats=layout.latents_file("{tok}", "stats"),
    output:
        samples=layout.samples_file("{tok}", "{bb}", "{cfg}", "{seed}"),
        **({"trajectories": layout.trajectories_file("{tok}", "{bb}", "{cfg}", "{seed}")} if RECORD_TRAJECTORIES else {}),
    cache: CACHE
    params:
        code=code_identity("sample"),
        # the scale as a param, not only a wildcard in the shell line: params key the output cache
        cfg=lambda wc: wc.cfg,
        launch=launcher,
        trajectories=lambda wc, output: f"--trajectories {shlex.quote(output.trajectories)}" if RECORD_TRAJECTORIES else "",
        spec=lambda wc: as_arg(cfg.sampling_spec(config, wc.seed)),
        diffusion=lambda wc, input: str(Path(input.ema).parent),
        tokenizer=lambda wc, input: str(Path(input.tokenizer).parent),
        latents=lambda wc, input: str(Path(input.stats).parent),
    log:
        layout.log_file("sample", "{tok}", "{bb}", "seed{seed}", "cfg{cfg}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON} {params.launch} sample --diffusion {params.diffusion:q} "
        "--tokenizer {params.tokenizer:q} --latents {params.latents:q} --spec {params.spec} "
        "--cfg-scale {params.cfg} --out {output.samples:q} {params.trajectories} > {log:q} 2>&1"


rule sample_untrained:
    input:
        tokenizer=layout.tokenizer_file("{tok}", "model.safetensors"),
        stats=layout.latents_file("{tok}", "stats"),
    output:
        layout.untrained_samples_file("{tok}", "{bb}"),
    cache: CACHE
    params:
        code=code_identity("sample"),
        launch=launcher,
        spec=lambda wc: as_arg({**cfg.sampling_spec(config), "backbone": cfg.backbone_spec(config, wc.tok, wc.bb)}),
        tokenizer=lambda wc, input: str(Path(input.tokenizer).parent),
        latents=lambda wc, input: str(Path(input.stats).parent),
    log:
        layout.log_file("sample", "{tok}", "{bb}", "untrained"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON} {params.launch} sample --untrained "
        "--tokenizer {params.tokenizer:q} --latents {params.latents:q} --spec {params.spec} "
        "--cfg-scale 1.0 --out {output:q} > {log:q} 2>&1"
