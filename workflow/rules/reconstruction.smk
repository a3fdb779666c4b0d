# Reconstruction quality of each tokenizer on the val split, trained and untrained (diffusability/reconstruction/):
# PSNR, SSIM, rFD with the teacher; rFID with the FID Inception, LPIPS with LPIPS-VGG weights when configured.


LPIPS_WEIGHTS = config["generation"].get("lpips_weights")


rule reconstruction:
    input:
        model=layout.tokenizer_file("{tok}", "model.safetensors"),
        val=data_split("val"),
        teacher=layout.teacher_file("model.safetensors"),
        inception=[REFERENCE["inception_weights"]] if INCEPTION else [],
        lpips=[LPIPS_WEIGHTS] if LPIPS_WEIGHTS else [],
    output:
        layout.reconstruction_rows("{tok}"),
    params:
        code=code_identity("reconstruction"),
        spec=as_arg(cfg.reconstruction_spec(config)),
        # rFID rows with the FID Inception, LPIPS rows with LPIPS-VGG weights (docs/models.md §3.4)
        extra=(inception_args() if INCEPTION else "")
        + (f" --lpips-weights {shlex.quote(LPIPS_WEIGHTS)}" if LPIPS_WEIGHTS else ""),
        tokenizer=lambda wc, input: str(Path(input.model).parent),
        teacher=lambda wc, input: str(Path(input.teacher).parent),
    log:
        layout.log_file("reconstruction", "{tok}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} reconstruction --tokenizer {params.tokenizer:q} "
        "--data {input.val:q} --feature-net {params.teacher:q} {params.extra} --spec {params.spec} --out {output:q} > {log:q} 2>&1"
