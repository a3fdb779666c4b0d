# Latents: fixed-seed posterior samples of both splits, masks on the latent grid, channel stats.


rule encode:
    input:
        model=layout.tokenizer_file("{tok}", "model.safetensors"),
        train=data_split("train"),
        val=data_split("val"),
    output:
        train=layout.latents_file("{tok}", "train"),
        val=layout.latents_file("{tok}", "val"),
        stats=layout.latents_file("{tok}", "stats"),
    wildcard_constraints:
        tok=cfg.latents_names_pattern(config, imported=False),
    cache: CACHE
    params:
        code=code_identity("encode"),
        spec=lambda wc: as_arg(cfg.encode_spec(config, wc.tok)),
        tokenizer=lambda wc, input: str(Path(input.model).parent),
        out=lambda wc, output: str(Path(output.train).parent),
    log:
        layout.log_file("encode", "{tok}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} encode --tokenizer {params.tokenizer:q} "
        "--train {input.train:q} --val {input.val:q} --spec {params.spec} --out {params.out:q} > {log:q} 2>&1"


# Existing latents (tokenizers.<name>.latents): checked against the tokenizer and copied, not encoded.
rule import_latents:
    input:
        tokenizer=layout.tokenizer_file("{tok}", "config.json"),
    output:
        train=layout.latents_file("{tok}", "train"),
        val=layout.latents_file("{tok}", "val"),
        stats=layout.latents_file("{tok}", "stats"),
    wildcard_constraints:
        tok=cfg.latents_names_pattern(config, imported=True),
    params:
        code=code_identity("import-latents"),
        source=lambda wc: cfg.imported_latents(config, wc.tok),
        spec=as_arg({"image_size": config["data"]["image_size"], "n_classes": config["data"]["n_classes"]}),
        tokenizer=lambda wc, input: str(Path(input.tokenizer).parent),
        out=lambda wc, output: str(Path(output.train).parent),
    log:
        layout.log_file("import_latents", "{tok}"),
    shell:
        "{DIFFUSABILITY} import-latents --source {params.source:q} --tokenizer {params.tokenizer:q} "
        "--spec {params.spec} --out {params.out:q} > {log:q} 2>&1"
