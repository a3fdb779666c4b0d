# Data: the image splits (with labels and foreground masks).
#
# ImageNet: each folder is listed once into a manifest (paths, labels, SHA-256); the splits depend
# on the manifests, so Snakemake never stats or hashes the raw tree. After changing the folders,
# rebuild the manifests with `snakemake -R imagenet_manifest`. Two storages (data.imagenet.storage):
# `memory` — prepare_data writes each split as one file held in memory (cap data.n_train / n_val);
# `shards` — imagenet_shards writes resumable, memory-mappable shards that every later stage reads
# batch by batch (the full 1.28 M images).

IMAGENET = config["data"]["source"] == "imagenet"


def imagenet_folder(split):
    """Image root of a split, and the train folder whose sorted wnids define the labels: raw paths,
    quoted once by the rule's `:q` (quoting here as well passed the quotes into the path)."""
    spec = cfg.imagenet_spec(config)
    return {"root": spec[f"{split}_dir"], "train": spec["train_dir"]}


def imagenet_workers(wildcards):
    """Hashing / decoding processes (data.imagenet.workers): the job's threads."""
    return cfg.imagenet_spec(config)["workers"]


def imagenet_cache_arg(wildcards):
    cache = cfg.imagenet_spec(config).get("cache_dir")
    return f"--cache-dir {shlex.quote(cache)}" if cache else ""


rule imagenet_manifest:
    output:
        layout.imagenet_manifest("{split}"),
    params:
        code=code_identity("imagenet-manifest"),
        root=lambda wc: imagenet_folder(wc.split)["root"],
        train=lambda wc: imagenet_folder(wc.split)["train"],
        cache=imagenet_cache_arg,
    log:
        layout.log_file("imagenet_manifest", "{split}"),
    threads: imagenet_workers
    shell:
        "{DIFFUSABILITY} imagenet-manifest --image-root {params.root:q} --train-dir {params.train:q} "
        "--workers {threads} {params.cache} --out {output:q} > {log:q} 2>&1"


rule imagenet_shards:
    input:
        layout.imagenet_manifest("{split}"),
    output:
        layout.imagenet_shards_index("{split}"),
    params:
        code=code_identity("imagenet-shards"),
        spec=lambda wc: as_arg(cfg.shards_spec(config, wc.split)),
        out=lambda wc, output: str(Path(output[0]).parent),
    log:
        layout.log_file("imagenet_shards", "{split}"),
    threads: imagenet_workers
    shell:
        "{DIFFUSABILITY} imagenet-shards --manifest {input:q} --out-dir {params.out:q} --spec {params.spec} > {log:q} 2>&1"


rule imagenet_shards_all:
    input:
        [layout.imagenet_shards_index(split) for split in ("train", "val")],


rule prepare_data:
    input:
        manifests=[layout.imagenet_manifest(split) for split in ("train", "val")] if IMAGENET else [],
    output:
        train=layout.data_split("train"),
        val=layout.data_split("val"),
    cache: CACHE
    params:
        code=code_identity("prepare-data"),
        spec=as_arg(cfg.prepare_data_spec(config)),
    log:
        layout.log_file("prepare_data"),
    threads: THREADS
    shell:
        "OMP_NUM_THREADS={threads} {DIFFUSABILITY} prepare-data --spec {params.spec} "
        "--out-train {output.train:q} --out-val {output.val:q} > {log:q} 2>&1"
