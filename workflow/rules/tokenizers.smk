# Tokenizers: training (resumes from its own checkpoints) or import of a pretrained checkpoint
# (`tokenizers.<name>.pretrained: PATH`). Both producing rules write the same files; the wildcard
# constraints give each tokenizer name to exactly one of them.


rule train_tokenizer:
    input:
        train=data_split("train"),
        teacher=layout.teacher_file("model.safetensors"),
    output:
        model=layout.tokenizer_file("{tok}", "model.safetensors"),
        config=layout.tokenizer_file("{tok}", "config.json"),
    wildcard_constraints:
        tok=cfg.tokenizer_names_pattern(config, pretrained=False),
    cache: CACHE
    params:
        # the proxy monitor runs only when monitor_every > 0: otherwise metric code is not this job's code
        code=lambda wc: code_identity("train-tokenizer", () if cfg.tokenizer_spec(config, wc.tok).get("monitor_every")
                                      else ("diffusability.tokenizers.monitor",)),
        launch=launcher,
        spec=lambda wc: as_arg(cfg.tokenizer_spec(config, wc.tok)),
        out=lambda wc, output: str(Path(output.model).parent),
        # A configured VFM (local folder) replaces the domain network as the alignment teacher. A
        # function of the wildcards only, so that a changed `teacher` is a params change and reruns
        # the chain (a parameter computed from the inputs is not a rerun trigger).
        teacher=lambda wc: cfg.tokenizer_teacher(config, wc.tok) or str(Path(layout.teacher_file()).parent),
    log:
        layout.log_file("train_tokenizer", "{tok}"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {PYTHON} {params.launch} train-tokenizer --spec {params.spec} "
        "--train {input.train:q} --teacher {params.teacher:q} --out {params.out:q} > {log:q} 2>&1"


rule import_tokenizer:
    output:
        model=layout.tokenizer_file("{tok}", "model.safetensors"),
        config=layout.tokenizer_file("{tok}", "config.json"),
    wildcard_constraints:
        tok=cfg.tokenizer_names_pattern(config, pretrained=True),
    params:
        code=code_identity("import-tokenizer"),
        source=lambda wc: shlex.quote(str(cfg.pretrained_tokenizer(config, wc.tok))),
        spec=lambda wc: as_arg(cfg.tokenizer_import_spec(config, wc.tok)),
        out=lambda wc, output: str(Path(output.model).parent),
    log:
        layout.log_file("import_tokenizer", "{tok}"),
    shell:
        "{DIFFUSABILITY} import-tokenizer --source {params.source} --spec {params.spec} "
        "--out {params.out:q} > {log:q} 2>&1"
