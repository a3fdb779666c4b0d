# Tokenizers: training (resumes from its own checkpoints) or import of a pretrained checkpoint
# (`tokenizers.<name>.pretrained: PATH`). Both producing rules write the same files; the wildcard
# constraints give each tokenizer name to exactly one of them.


def tokenizer_monitor(wc):
    """(monitor on, study named) of tokenizer ``wc.tok``'s training-time monitor (tokenizers/monitor.py)."""
    spec = cfg.tokenizer_spec(config, wc.tok)
    return bool(spec.get("monitor_every")), bool(spec.get("monitor_every") and spec.get("monitor_study"))


def tokenizer_monitor_code(wc):
    """The monitor's modules this job does not run: all of them when it is off, the study predictor's
    (and the analysis code only it imports) when no monitor_study is named."""
    on, study = tokenizer_monitor(wc)
    if not on:
        return ("diffusability.tokenizers.monitor", "diffusability.analysis.monitor_predictor")
    return () if study else ("diffusability.analysis.monitor_predictor",)


rule train_tokenizer:
    input:
        train=data_split("train"),
        teacher=layout.teacher_file("model.safetensors"),
        # the monitor's fixed subset comes from the val split (its masks make SRSS computable); an input only
        # when the monitor is on. monitor_study is a path, not an input: it is usually this workflow's own
        # results/tables of an earlier run, which depend on this rule (a cycle), and it never changes weights.
        val=lambda wc: data_split("val") if tokenizer_monitor(wc)[0] else [],
    output:
        model=layout.tokenizer_file("{tok}", "model.safetensors"),
        config=layout.tokenizer_file("{tok}", "config.json"),
    wildcard_constraints:
        tok=cfg.tokenizer_names_pattern(config, pretrained=False),
    cache: CACHE
    params:
        # the proxy monitor runs only when monitor_every > 0 (its study predictor only with monitor_study):
        # otherwise metric (and analysis) code is not this job's code
        code=lambda wc: code_identity("train-tokenizer", tokenizer_monitor_code(wc)),
        # a function of the wildcards only (the path of the val split), like `teacher` below
        monitor=lambda wc: "--val " + shlex.quote(str(data_split("val"))) if tokenizer_monitor(wc)[0] else "",
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
        "--train {input.train:q} --teacher {params.teacher:q} {params.monitor} --out {params.out:q} > {log:q} 2>&1"


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
