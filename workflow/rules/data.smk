# Data: the image splits (with labels and foreground masks) and the teacher network.


rule prepare_data:
    output:
        train=layout.data_split("train"),
        val=layout.data_split("val"),
    params:
        spec=as_arg(cfg.data_spec(config)),
    log:
        "logs/prepare_data.log",
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} prepare-data --spec {params.spec} "
        "--out-train {output.train} --out-val {output.val} > {log} 2>&1"


rule train_teacher:
    input:
        train=layout.data_split("train"),
        val=layout.data_split("val"),
    output:
        model=layout.teacher_file("model.safetensors"),
        config=layout.teacher_file("config.json"),
    params:
        spec=as_arg(cfg.teacher_spec(config)),
        out=lambda wc, output: str(Path(output.model).parent),
    log:
        "logs/train_teacher.log",
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} train-teacher --spec {params.spec} "
        "--train {input.train} --val {input.val} --out {params.out} > {log} 2>&1"
