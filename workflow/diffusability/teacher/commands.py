"""Command of the teacher stage: ``train-teacher``.

Trains the small domain classifier (:mod:`diffusability.teacher.domain_net`) on the train split and
reports its accuracy on the val split. The network is the feature network of the generation and
reconstruction metrics on the embedded default and the stand-in teacher of the tokenizer regularizers.
Torch is imported inside the command function.
"""

from __future__ import annotations

import argparse

from ..data.splits import load_images, read_split_metadata
from ..devices import resolve_device


def register(subparsers) -> None:
    """Add ``train-teacher`` to the ``diffusability`` parser."""
    from ..specs import json_spec
    from ..devices import add_device_argument

    parser = subparsers.add_parser(
        "train-teacher", help="train the domain classifier (feature net / stand-in teacher)",
        description="Train the small domain CNN on the train split; report accuracy on the val split.")
    parser.add_argument("--spec", type=json_spec, required=True,
                        help='JSON: {"seed", "width", "steps", "batch_size", "lr", "weight_decay", ...}')
    parser.add_argument("--train", required=True, help="train split (.safetensors or a shard index.json)")
    parser.add_argument("--val", required=True, help="val split (.safetensors or a shard index.json)")
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=run_train_teacher)


def run_train_teacher(args: argparse.Namespace) -> None:
    """Train the domain classifier of ``--spec`` on ``--train`` and write it to ``--out``."""
    from ..errors import require
    from ..progress import log
    from .domain_net import train_domain_classifier

    train_images, train_labels = load_images(args.train, keys=("images",))
    val_images, val_labels = load_images(args.val, keys=("images",))
    require(train_labels is not None and val_labels is not None, f"{args.train} / {args.val}: need 'labels'")
    # a classifier of one class learns nothing (and its features would score every sample set alike)
    classes = len(set(train_labels.tolist()))
    require(classes >= 2, f"{args.train}: the domain classifier needs at least two classes, the labels hold {classes}")
    metadata = read_split_metadata(args.train)
    num_classes = int(metadata["n_classes"]) if "n_classes" in metadata else None
    config = train_domain_classifier(train_images, train_labels, args.spec, args.out,
                                     val_images=val_images, val_labels=val_labels, num_classes=num_classes,
                                     device=resolve_device(args.device))
    log.info("domain net: val accuracy %.3f (chance %.3f), train accuracy %.3f",
             config["val_accuracy"], config["chance_accuracy"], config["train_accuracy"])
