"""``diffusability train-tokenizer | import-tokenizer``: the tokenizer stage's commands.

- ``train-tokenizer``: train (or resume) one tokenizer into its directory.
- ``import-tokenizer``: write a pretrained local checkpoint (diffusers or ours) as a tokenizer directory.

Encoding is the latents stage's (:mod:`diffusability.latents`), reconstruction quality the
reconstruction stage's (:mod:`diffusability.reconstruction`).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the tokenizer stage's subcommands to the ``diffusability`` parser."""
    from ..specs import json_spec

    parser = subparsers.add_parser("train-tokenizer", help="train (or resume) a VAE tokenizer",
                                   description="Train a tokenizer on a train split; resumes from OUT/checkpoints.")
    parser.add_argument("--spec", type=json_spec, required=True, help="JSON tokenizer spec (see TokenizerSpec)")
    parser.add_argument("--train", required=True, help="train split (.safetensors: images uint8 NHWC, labels; or a shard index.json)")
    parser.add_argument("--teacher", default=None, help="teacher directory: the domain net, or a local transformers Dinov2/CLIP/ViTMAE "
                             "(teacher for the perceptual loss and VF/REPA)")
    parser.add_argument("--val", default=None,
                        help="val split of the training-time monitor (spec monitor_every > 0): a fixed subset of it, "
                             "with its masks (SRSS); default: the train split (no masks)")
    parser.add_argument("--out", required=True, help="tokenizer directory")
    parser.set_defaults(func=run_train_tokenizer)

    parser = subparsers.add_parser("import-tokenizer", help="import a pretrained tokenizer (no training)",
                                   description="Write a local diffusers AutoencoderKL folder, or a tokenizer "
                                               "of our format, as a tokenizer directory.")
    parser.add_argument("--source", required=True,
                        help="diffusers AutoencoderKL folder, or config.json + model.safetensors of ours")
    parser.add_argument("--spec", type=json_spec, required=True, help='JSON: {"name", "seed", "image_size"}')
    parser.add_argument("--out", required=True, help="tokenizer directory")
    parser.set_defaults(func=run_import_tokenizer)


def run_train_tokenizer(args: argparse.Namespace) -> int:
    from ..data.splits import open_image_split
    from ..progress import log
    from .train import train_tokenizer

    from .spec import as_spec

    split = open_image_split(args.train)
    teacher = None
    if args.teacher:
        from .teachers import load_teacher

        teacher = load_teacher(args.teacher)
    # what the weights depend on besides the spec: a checkpoint of other inputs is never resumed
    spec = as_spec(args.spec)
    inputs = {"train": args.train, "teacher": args.teacher,
              "lpips_weights": spec.lpips_weights if spec.perceptual == "lpips" else None}
    # the monitor's split is not an input of the weights (the monitor never changes them): not in ``inputs``
    monitor_split = open_image_split(args.val) if args.val and spec.monitor_every else None
    predictor = None
    if spec.monitor_every and spec.monitor_study:
        # fitted once here, so a bad study folder fails before any step (exit 2 naming its file)
        from ..analysis.monitor_predictor import study_predictor

        predictor = study_predictor(spec, monitor_split)
    train_tokenizer(split.images, split.labels, spec, args.out, teacher=teacher, inputs=inputs,
                    monitor_split=monitor_split, predictor=predictor)
    log.info("train-tokenizer: wrote %s", args.out)
    return 0


def run_import_tokenizer(args: argparse.Namespace) -> int:
    from ..progress import log
    from .pretrained import import_pretrained_tokenizer

    import_pretrained_tokenizer(args.source, args.spec or {}, args.out)
    log.info("import-tokenizer: wrote %s from %s", args.out, args.source)
    return 0
