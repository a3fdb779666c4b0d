# Teacher: the small domain classifier trained on the train split (diffusability/teacher/). The feature
# network of FD/IS and rFD on the embedded default and the stand-in teacher of the tokenizer regularizers.


rule train_teacher:
    input:
        train=data_split("train"),
        val=data_split("val"),
    output:
        model=layout.teacher_file("model.safetensors"),
        config=layout.teacher_file("config.json"),
    cache: CACHE
    params:
        code=code_identity("train-teacher"),
        spec=as_arg(cfg.teacher_spec(config)),
        out=lambda wc, output: str(Path(output.model).parent),
    log:
        layout.log_file("train_teacher"),
    threads: 2  # alone on the critical path: every tokenizer waits for it
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} train-teacher --spec {params.spec} "
        "--train {input.train:q} --val {input.val:q} --out {params.out:q} > {log:q} 2>&1"
