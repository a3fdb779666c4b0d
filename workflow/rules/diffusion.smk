# Diffusion backbones trained with flow matching on each tokenizer's normalised latents, or imported
# from a trained model directory (tokenizers.<tok>.diffusion.<bb>: checked against the latents).
# One model per seed repeat (config repeats; the seed is in the spec, so it keys the cache too).


rule train_diffusion:
    input:
        train=layout.latents_file("{tok}", "train"),
        stats=layout.latents_file("{tok}", "stats"),
    output:
        ema=layout.diffusion_file("{tok}", "{bb}", "ema.safetensors", "{seed}"),
        config=layout.diffusion_file("{tok}", "{bb}", "config.json", "{seed}"),
    cache: CACHE
    params:
        code=code_identity("train-diffusion"),
        launch=launcher,
        spec=lambda wc: as_arg(cfg.backbone_spec(config, wc.tok, wc.bb, wc.seed)),
        latents=lambda wc, input: str(Path(input.train).parent),
        out=lambda wc, output: str(Path(output.ema).parent),
        imported=lambda wc: (f"--import-from {shlex.quote(cfg.imported_diffusion(config, wc.tok, wc.bb))}"
                             if cfg.imported_diffusion(config, wc.tok, wc.bb) else ""),
    log:
        layout.log_file("train_diffusion", "{tok}", "{bb}", "seed{seed}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON} {params.launch} train-diffusion --latents {params.latents:q} "
        "--spec {params.spec} {params.imported} --out {params.out:q} > {log:q} 2>&1"
