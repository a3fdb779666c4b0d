"""The bad-input table: every reader and every command, fed what users actually hand it by mistake.

Each row of :data:`TABLE` is one command line whose inputs are all valid except one (missing, a hostile
path, truncated, garbage, wrong dtype, wrong shape, NaN, empty, single class, a bad spec key). Every row
must end with exit status 2 and a message naming the file or key — never a traceback, never a result:
nothing may appear under the case's output folder and nothing may be printed on stdout.

The valid neighbours come from one module fixture (:func:`good`): tiny image splits, an untrained domain
net, a random conv VAE and its encoded latents, a zero-velocity SiT, samples, trajectories, reference
statistics, an aggregated study, a config and a profile. :func:`test_the_neighbours_are_valid` runs
every command on them unchanged and expects exit 0 and an output, so a row fails because of its one bad
input and not because of a broken neighbour. The commands run in-process through
``diffusability.cli.main`` (as the console script does; the whole module takes about half a minute on two
cores); one case also runs as a real subprocess to pin the exit status.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from diffusability.cli import build_parser, main
from diffusability.io import load_arrays, load_tensors, save_npz, save_tensors, write_json, write_parquet
from sit_reference import sit_state_dict

REPO = Path(__file__).resolve().parent.parent
#: a file name a shell would run: if any command passed a path through a shell, PWNED would appear
HOSTILE = "a b;$(touch PWNED) `touch PWNED2` 'q\""
TOKENIZER = dict(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3)
TOKENIZER_TRAIN = {**TOKENIZER, "batch_size": 4, "steps": 1, "checkpoint_every": 1}
TEACHER_TRAIN = {"seed": 0, "width": 8, "steps": 1, "batch_size": 8}
DIFFUSION = {"depth": 1, "width": 16, "heads": 2, "steps": 1, "batch_size": 4, "num_classes": 2}
SAMPLING = {"num_samples": 2, "num_steps": 2, "batch_size": 2, "trajectories": 0, "device": "cpu"}
MODEL_METRICS = {"enabled": ["fisher"], "fisher": {"s_points": 2, "probes": 1, "max_samples": 8, "batch_size": 8}}
TOKENIZER_METRICS = {"enabled": ["equivariance"], "equivariance": {"rotations": [1], "scales": [0.5], "max_images": 4}}
LATENT_METRICS = {"seed": 0, "enabled": ["lnc"], "params": {}}
TOKS = [f"tok{i}" for i in range(8)]
REGULARIZERS = ["none", "none", "mcos", "mcos", "eq", "eq", "lcr", "lcr"]


# ----------------------------------------------------------------------------- the valid neighbours

def _split(path: Path, n: int, seed: int) -> None:
    """An image split as prepare-data writes it: 16 px, 2 classes, foreground masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 16, 16), dtype=bool)
    masks[:, 4:12, 4:12] = True
    save_tensors(path, {"images": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                        "labels": (np.arange(n) % 2).astype(np.int64), "masks": masks},
                 metadata={"n_classes": "2", "image_size": "16"})


def _rows(values: dict[str, float], direction: str = "lower", params: str = "{}") -> pd.DataFrame:
    return pd.DataFrame([{"metric": m, "value": float(v), "direction": direction, "params": params, "n": 16}
                         for m, v in values.items()])


def _study(root: Path) -> Path:
    """A small aggregated study (8 tokenizers in 4 clusters, one backbone, two scales) made by the commands
    themselves: per-job rows → aggregate → correlate → predictions. Returns its tables folder."""
    from diffusability.metrics.normalization import channel_stats, normalize_latents
    from diffusability.metrics.registry import compute_metrics
    from diffusability.workflow import layout

    rng = np.random.default_rng(0)
    spec = {}
    args = {"metrics": [], "reconstruction": [], "generation": [], "untrained": []}
    root.mkdir()
    with contextlib.chdir(root):
        for i, (tok, regularizer) in enumerate(zip(TOKS, REGULARIZERS)):
            spec[tok] = {"family": "conv-f2d3", "regularizer": regularizer, "kl_weight": 1e-6, "latent_channels": 3,
                         "downsample": 2, "image_size": 16, "architecture": "conv", "regularizer_params": {}}
            latents = torch.from_numpy(rng.normal(size=(16, 3, 8, 8)).astype(np.float32)) * (1 + i / 4)
            rows = compute_metrics(normalize_latents(latents, *channel_stats(latents)), names=["sec", "rmsc"])
            sec = float(rows.loc[rows["metric"] == "sec", "value"].item())
            write_parquet(rows, layout.latent_metric_rows(tok))
            write_parquet(_rows({"psnr": 20 + i, "psnr_untrained": 5.0}, "higher"), layout.reconstruction_rows(tok))
            args["metrics"].append(layout.latent_metric_rows(tok))
            args["reconstruction"].append(layout.reconstruction_rows(tok))
            for cfg in ("1.00", "2.00"):
                fd = 10 + 20 * sec + float(cfg) + rng.normal(scale=0.05)
                write_parquet(_rows({"fd": fd}), layout.generation_rows(tok, "sit", cfg))
                args["generation"].append(layout.generation_rows(tok, "sit", cfg))
            write_parquet(_rows({"fd": 300.0}), layout.untrained_generation_rows(tok, "sit"))
            args["untrained"].append(layout.untrained_generation_rows(tok, "sit"))
        argv = ["aggregate", "--spec", json.dumps({"tokenizers": spec, "config": {}}), "--out-dir", "tables"]
        for kind, paths in args.items():
            argv += [f"--{kind}", *paths]
        assert main(argv) == 0
        assert main(["correlate", "--tables", "tables", "--spec", json.dumps({"bootstrap": 20}),
                     "--out-correlations", "tables/correlations.parquet",
                     "--out-regressions", "tables/regressions.parquet"]) == 0
        assert main(["predictions", "--tables", "tables", "--out-predictions", "tables/predictions.parquet",
                     "--out-scores", "tables/prediction_scores.parquet",
                     "--out-figure", "figures/predicted_vs_observed.png"]) == 0
    return root / "tables"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> SimpleNamespace:
    """Every kind of valid input the commands take, small (the whole fixture takes a few seconds)."""
    from diffusability.diffusion.train import as_spec, init_model, write_outputs
    from diffusability.rows import result_row, rows_frame
    from diffusability.teacher.domain_net import DomainClassifier
    from diffusability.tokenizers.factory import build_tokenizer
    from diffusability.tokenizers.spec import TokenizerSpec

    root = tmp_path_factory.mktemp("good")
    g = SimpleNamespace(root=root, train=root / "train.safetensors", val=root / "val.safetensors",
                        teacher=root / "teacher", tok=root / "tok", lat=root / "lat", model=root / "model",
                        samples=root / "samples.npz", stats=root / "reference.npz", traj=root / "traj.safetensors",
                        latents=root / "latents.safetensors", rep_stats=root / "dinov2.npz",
                        inception_rows=root / "inception_rows.parquet", config=REPO / "config" / "smoke.yaml",
                        profile=REPO / "cluster", manifest=root / "manifest.parquet", images=root / "imagenet",
                        sit=root / "sit.pt")
    _split(g.train, 16, 0)
    _split(g.val, 12, 1)
    torch.manual_seed(0)
    net = DomainClassifier(num_classes=2, image_size=16, width=8).eval()  # untrained: only its format matters
    save_tensors(g.teacher / "model.safetensors", net.state_dict())
    write_json(g.teacher / "config.json", net.config())
    spec = TokenizerSpec(**TOKENIZER)
    save_tensors(g.tok / "model.safetensors", build_tokenizer(spec).state_dict())  # random f2 VAE: 16 px → 3×8×8
    write_json(g.tok / "config.json", spec.to_dict())
    assert main(["encode", "--tokenizer", str(g.tok), "--train", str(g.train), "--val", str(g.val),
                 "--spec", json.dumps({"batch_size": 8}), "--device", "cpu", "--out", str(g.lat)]) == 0
    backbone = {"name": "sit-xs", "family": "sit", "depth": 1, "width": 16, "heads": 2, "num_classes": 2}
    model = init_model(backbone, 3, 8, 2).eval()
    write_outputs(g.model, model, model, as_spec(backbone), {"in_channels": 3, "grid_size": 8, "num_classes": 2}, [])
    # a checkpoint in SiT's own format (convert-diffusion's input): width 16, 2 heads, patch 1, 3×8×8, 2 classes
    torch.save(sit_state_dict(depth=1, width=16, patch=1, channels=3, grid=8, num_classes=2), g.sit)
    val = load_arrays(g.val)
    save_npz(g.samples, arr_0=val["images"], labels=val["labels"])
    assert main(["reference-stats", "--images", str(g.val), "--feature-net", str(g.teacher), "--device", "cpu",
                 "--out", str(g.stats)]) == 0
    trajectory = torch.randn(3, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    save_tensors(g.traj, {"trajectory": trajectory, "times": torch.tensor([0.0, 0.5, 1.0])})
    save_tensors(g.latents, {k: v for k, v in load_tensors(g.lat / "val.safetensors").items()})
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 4))
    save_npz(g.rep_stats, mu=features.mean(0), sigma=np.cov(features.T), n=np.array(20), image_size=np.array(16),
             space=np.array("dinov2"), input_size=np.array(224))
    write_parquet(rows_frame([result_row("fd", 12.0, "lower", {"feature_net": "inception", "n_reference": 20}, 12)]),
                  g.inception_rows)
    for wnid in ("n01", "n02"):  # an ImageNet-like folder tree and its manifest
        (g.images / wnid).mkdir(parents=True)
        for k in range(2):
            from PIL import Image

            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(g.images / wnid / f"{wnid}_{k}.JPEG")
    assert main(["imagenet-manifest", "--image-root", str(g.images), "--train-dir", str(g.images),
                 "--out", str(g.manifest)]) == 0
    g.tables = _study(root / "study")
    return g


# ----------------------------------------------------------------------------- valid command lines

#: per command, the valid command line as (argument, value) pairs; "<name>" is a positional argument.
#: Every output goes under the case's ``out`` folder, which must stay empty when the command fails. The
#: representation-stats --model folder is never built (see WITH_NEIGHBOURS).
GOOD: dict[str, Callable[[SimpleNamespace, Path], list[tuple[str, object]]]] = {
    "prepare-data": lambda g, o: [("--spec", json.dumps({"seed": 0, "image_size": 16, "n_train": 4, "n_val": 4,
                                                         "n_classes": 2})),
                                  ("--out-train", o / "train.safetensors"), ("--out-val", o / "val.safetensors")],
    "imagenet-manifest": lambda g, o: [("--image-root", g.images), ("--train-dir", g.images),
                                       ("--out", o / "manifest.parquet")],
    "imagenet-shards": lambda g, o: [("--manifest", g.manifest), ("--out-dir", o / "shards"),
                                     ("--spec", json.dumps({"image_size": 16, "shard_size": 2}))],
    "train-teacher": lambda g, o: [("--spec", json.dumps(TEACHER_TRAIN)), ("--train", g.train), ("--val", g.val),
                                   ("--device", "cpu"), ("--out", o / "teacher")],
    "train-tokenizer": lambda g, o: [("--spec", json.dumps(TOKENIZER_TRAIN)), ("--train", g.train),
                                     ("--out", o / "tok")],
    "import-tokenizer": lambda g, o: [("--source", g.tok), ("--spec", json.dumps({"name": "imp", "image_size": 16})),
                                      ("--out", o / "tok")],
    "reconstruction": lambda g, o: [("--tokenizer", g.tok), ("--data", g.val), ("--feature-net", g.teacher),
                                    ("--spec", json.dumps({"batch_size": 8})), ("--device", "cpu"),
                                    ("--out", o / "rows.parquet")],
    "encode": lambda g, o: [("--tokenizer", g.tok), ("--train", g.train), ("--val", g.val),
                            ("--spec", json.dumps({"batch_size": 8})), ("--device", "cpu"), ("--out", o / "lat")],
    "import-latents": lambda g, o: [("--source", g.lat), ("--tokenizer", g.tok),
                                    ("--spec", json.dumps({"image_size": 16, "n_classes": 2})), ("--out", o / "lat")],
    "metrics": lambda g, o: [("<input>", g.latents), ("--metrics", "lnc,sec"), ("--out", o / "rows.parquet")],
    "latent-metrics": lambda g, o: [("--latents", g.lat), ("--spec", json.dumps(LATENT_METRICS)), ("--device", "cpu"),
                                    ("--out", o / "rows.parquet")],
    "tokenizer-metrics": lambda g, o: [("--tokenizer", g.tok), ("--data", g.val), ("--latents", g.lat),
                                       ("--spec", json.dumps(TOKENIZER_METRICS)), ("--device", "cpu"),
                                       ("--out", o / "rows.parquet")],
    "model-metrics": lambda g, o: [("--diffusion", g.model), ("--latents", g.lat), ("--spec", json.dumps(MODEL_METRICS)),
                                   ("--device", "cpu"), ("--out", o / "rows.parquet")],
    "train-diffusion": lambda g, o: [("--latents", g.lat), ("--spec", json.dumps(DIFFUSION)), ("--out", o / "model")],
    "convert-diffusion": lambda g, o: [("--source", g.sit), ("--heads", "2"), ("--latent-scale", "0.5"),
                                       ("--out", o / "model")],
    "sample": lambda g, o: [("--diffusion", g.model), ("--tokenizer", g.tok), ("--latents", g.lat),
                            ("--spec", json.dumps(SAMPLING)), ("--cfg-scale", "1.5"), ("--out", o / "samples.npz")],
    "generation-metrics": lambda g, o: [("--samples", g.samples), ("--reference", g.val), ("--feature-net", g.teacher),
                                        ("--spec", json.dumps({"batch_size": 8, "is_splits": 2})), ("--device", "cpu"),
                                        ("--out", o / "rows.parquet")],
    "reference-stats": lambda g, o: [("--images", g.val), ("--feature-net", g.teacher), ("--device", "cpu"),
                                     ("--out", o / "stats.npz")],
    "trajectory-metrics": lambda g, o: [("--trajectories", g.traj), ("--out", o / "rows.parquet")],
    "representation-stats": lambda g, o: [("--images", g.val), ("--space", "dinov2"), ("--model", g.root / "dinov2"),
                                          ("--device", "cpu"), ("--out", o / "stats.npz")],
    "representation-metrics": lambda g, o: [("--samples", g.samples), ("--inception-rows", g.inception_rows),
                                            ("--device", "cpu"), ("--out", o / "rows.parquet")],
    "aggregate": lambda g, o: [("--spec", json.dumps({"tokenizers": {}, "config": {}})), ("--out-dir", o / "tables")],
    "correlate": lambda g, o: [("--tables", g.tables), ("--spec", json.dumps({"bootstrap": 20})),
                               ("--out-correlations", o / "correlations.parquet"),
                               ("--out-regressions", o / "regressions.parquet")],
    "figures": lambda g, o: [("--tables", g.tables), ("--out-dir", o / "figures")],
    "summarize": lambda g, o: [("--tables", g.tables), ("--out", o / "summary.md")],
    "predictions": lambda g, o: [("--tables", g.tables), ("--out-predictions", o / "p.parquet"),
                                 ("--out-scores", o / "s.parquet"), ("--out-figure", o / "p.png")],
    "predict": lambda g, o: [("<latents>", g.latents), ("--study", g.tables), ("--out", o / "prediction.parquet")],
    "plan": lambda g, o: [("--configfile", g.config), ("--profile", g.profile)],
}


# ----------------------------------------------------------------------------- how an input is spoilt

Writer = Callable[[Path, SimpleNamespace], None]  # spoils the file at a path (a copy of the good one, if any)


def garbage(path: Path, g) -> None:
    path.write_bytes(b"\x00\x01garbage" * 50)


def half(path: Path, g) -> None:
    """The first half of the file: a copy killed while it was written."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove(path: Path, g) -> None:
    path.unlink()


def tensors(edit: Callable[[dict], dict]) -> Writer:
    """Rewrite a .safetensors file with ``edit(its tensors)`` (metadata kept)."""
    def write(path: Path, g) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        data = edit(dict(load_tensors(path)))
        path.unlink()
        save_tensors(path, data, metadata)
    return write


def arrays(edit: Callable[[dict], dict]) -> Writer:
    """Rewrite an .npz file with ``edit(its arrays)``."""
    def write(path: Path, g) -> None:
        data = edit(dict(load_arrays(path)))
        path.unlink()
        save_npz(path, **data)
    return write


def table(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Writer:
    def write(path: Path, g) -> None:
        frame = edit(pd.read_parquet(path))
        path.unlink()
        write_parquet(frame, path)
    return write


def checkpoint(edit: Callable[[object], object]) -> Writer:
    """Rewrite a torch.save file with ``edit(what it holds)``."""
    def write(path: Path, g) -> None:
        data = edit(torch.load(path, map_location="cpu", weights_only=True))
        path.unlink()
        torch.save(data, path)
    return write


def text(content: str) -> Writer:
    def write(path: Path, g) -> None:
        path.write_text(content)
    return write


def edit_json(edit: Callable[[dict], dict]) -> Writer:
    def write(path: Path, g) -> None:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return write


def _set(key, value):
    return lambda d: {**d, key: value}


def _nan(key):
    """``key`` with its first value NaN."""
    def edit(d):
        bad = torch.as_tensor(d[key]).clone().float()
        bad.view(-1)[0] = float("nan")
        return {**d, key: bad}
    return edit


def _drop(*keys):
    return lambda d: {k: v for k, v in d.items() if k not in keys}


def _single_class(d):
    return {**d, "labels": torch.zeros_like(torch.as_tensor(d["labels"]))}


# the spoilt versions of an image split (images uint8 (N, H, W, 3), labels int (N,))
FLOAT_IMAGES = tensors(lambda d: {**d, "images": d["images"].float() / 255})
GREY_IMAGES = tensors(lambda d: {**d, "images": d["images"][..., 0]})          # (N, H, W): no colour axis
EMPTY_SPLIT = tensors(lambda d: {k: v[:0] for k, v in d.items()})
SINGLE_CLASS = tensors(_single_class)
FLOAT_LABELS = tensors(lambda d: {**d, "labels": d["labels"].float()})
LABEL_COUNT = tensors(lambda d: {**d, "labels": d["labels"][:-1]})
NO_MASKS = tensors(_drop("masks"))
# … of a latent file (latents float (N, C, h, w), labels, masks)
NAN_LATENTS = tensors(_nan("latents"))
INT_LATENTS = tensors(lambda d: {**d, "latents": d["latents"].to(torch.int32)})
FLAT_LATENTS = tensors(lambda d: {**d, "latents": d["latents"].flatten(1)})
EMPTY_LATENTS = tensors(lambda d: {k: v[:0] for k, v in d.items()})
SINGLE_CLASS_LATENTS = tensors(_single_class)
LATENT_LABELS_OUT_OF_RANGE = tensors(lambda d: {**d, "labels": d["labels"] + 5})
# … of stats.safetensors (mean, std (C,))
NAN_STD = tensors(_nan("std"))
ZERO_STD = tensors(lambda d: {**d, "std": torch.zeros_like(d["std"])})
SHORT_STATS = tensors(lambda d: {"mean": d["mean"][:2], "std": d["std"][:2]})


# ----------------------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    """One bad input: command ``command`` with argument ``arg`` replaced by what ``make`` writes under the
    case's folder. ``expect`` is the text the message must contain (default: the bad path itself)."""

    command: str
    arg: str
    label: str
    make: Callable[[Path, SimpleNamespace], tuple[object, str]]
    extra: tuple[tuple[str, object], ...] = ()   # further argument changes the case needs (not bad inputs)

    @property
    def id(self) -> str:
        return f"{self.command}/{self.arg.strip('-<>')}:{self.label}"


def missing(name: str = "absent.safetensors"):
    def make(t: Path, g):
        return t / name, str(t / name)
    return make


def hostile(suffix: str = ""):
    """A path that is not there and whose name is shell code (nothing may run it)."""
    def make(t: Path, g):
        return t / (HOSTILE + suffix), HOSTILE + suffix
    return make


def at(name: str, writer: Writer, like: str | None = None, expect: str | None = None):
    """The file ``name`` in the case's folder: a copy of the good input ``like`` (if given), then spoilt."""
    def make(t: Path, g):
        path = t / name
        if like is not None:
            shutil.copyfile(getattr(g, like), path)
        writer(path, g)
        return path, expect or str(path)
    return make


def inside(folder: str, inner: str, writer: Writer, expect: str | None = None):
    """A copy of the good folder ``folder`` whose file ``inner`` is spoilt; the message must name that file
    (or ``expect``)."""
    def make(t: Path, g):
        copy = t / Path(getattr(g, folder)).name
        shutil.copytree(getattr(g, folder), copy)
        writer(copy / inner, g)
        return copy, expect or str(copy / inner)
    return make


def value(text_: str, expect: str):
    """A literal argument value (a spec, a number) and the key the message must name."""
    def make(t: Path, g):
        return text_, expect
    return make


SPLIT_KINDS = [  # (label, writer): an image split spoilt one way
    ("truncated", half), ("garbage", garbage), ("float-images", FLOAT_IMAGES), ("no-colour-axis", GREY_IMAGES),
    ("empty", EMPTY_SPLIT), ("label-count", LABEL_COUNT),
]


def split_cases(command: str, arg: str, like: str, kinds=SPLIT_KINDS, extra=()) -> list[Case]:
    """Missing, hostile and every spoilt version of the image split ``arg`` of ``command``."""
    cases = [Case(command, arg, "missing", missing(f"{like}.safetensors"), extra),
             Case(command, arg, "hostile-path", hostile(".safetensors"), extra)]
    cases += [Case(command, arg, label, at(f"{like}.safetensors", writer, like=like), extra) for label, writer in kinds]
    return cases


def spec_cases(command: str, *rows: tuple[str, str, str]) -> list[Case]:
    """``--spec`` values: (label, JSON text, key the message must name); JSON's NaN literal included."""
    return [Case(command, "--spec", label, value(text_, key)) for label, text_, key in rows]


NOT_JSON = ("not-json", "{x", "--spec")
NOT_OBJECT = ("not-an-object", "[1, 2]", "--spec")
UNKNOWN_KEY = ("unknown-key", '{"colour": 1}', "colour")

TABLE: list[Case] = []

# --- data ---------------------------------------------------------------------------------------------------
TABLE += spec_cases("prepare-data", NOT_JSON, NOT_OBJECT,
                    ("unknown-key", '{"seed": 0, "colour": 1}', "colour"),
                    ("no-seed", '{"n_train": 4}', "seed"),
                    ("wrong-dtype", '{"seed": 0, "n_train": "four"}', "n_train"),
                    ("nan", '{"seed": 0, "image_size": NaN}', "image_size"),
                    ("negative", '{"seed": 0, "n_val": -1}', "n_val"),
                    ("bad-fraction", '{"seed": 0, "imagenet": {"max_bad_fraction": NaN}}', "max_bad_fraction"))
TABLE += [Case("prepare-data", "--spec", "imagenet-hostile-folder",
               value(json.dumps({"seed": 0, "source": "imagenet", "n_classes": 2,
                                 "imagenet": {"train_dir": HOSTILE, "val_dir": HOSTILE}}), HOSTILE))]
# an empty folder would give an empty manifest and, two rules later, shards of nothing
TABLE += [Case("imagenet-manifest", "--image-root", "hostile-path", hostile()),
          Case("imagenet-manifest", "--image-root", "a-file", at("root.txt", garbage)),
          Case("imagenet-manifest", "--image-root", "empty-folder", at("empty", lambda p, g: p.mkdir())),
          Case("imagenet-manifest", "--train-dir", "missing", missing("train")),
          Case("imagenet-manifest", "--workers", "zero", value("0", "--workers"))]
# a manifest is a Parquet table of another step: its columns and dtypes are an input like any file's bytes
TABLE += [Case("imagenet-shards", "--manifest", "missing", missing("manifest.parquet")),
          Case("imagenet-shards", "--manifest", "hostile-path", hostile(".parquet")),
          Case("imagenet-shards", "--manifest", "garbage", at("manifest.parquet", garbage)),
          Case("imagenet-shards", "--manifest", "truncated", at("manifest.parquet", half, like="manifest")),
          Case("imagenet-shards", "--manifest", "no-label-column",
               at("manifest.parquet", table(lambda f: f.drop(columns="label")), like="manifest")),
          Case("imagenet-shards", "--manifest", "label-as-text",
               at("manifest.parquet", table(lambda f: f.assign(label=f["label"].astype(str) + "x")), like="manifest")),
          Case("imagenet-shards", "--manifest", "empty",
               at("manifest.parquet", table(lambda f: f.iloc[:0]), like="manifest"))]
TABLE += spec_cases("imagenet-shards", NOT_JSON, UNKNOWN_KEY,
                    ("wrong-dtype", '{"shard_size": "big"}', "shard_size"),
                    ("nan", '{"max_bad_fraction": NaN}', "max_bad_fraction"))

# --- teacher and tokenizers ---------------------------------------------------------------------------------
# labels matter here: one class trains a classifier of nothing, float labels were silently cast to classes
TABLE += split_cases("train-teacher", "--train", "train",
                     SPLIT_KINDS + [("single-class", SINGLE_CLASS), ("float-labels", FLOAT_LABELS)])
TABLE += split_cases("train-teacher", "--val", "val", [("garbage", garbage), ("float-images", FLOAT_IMAGES)])
TABLE += spec_cases("train-teacher", NOT_JSON, UNKNOWN_KEY, ("wrong-dtype", '{"steps": "many"}', "steps"),
                    ("nan", '{"lr": NaN}', "lr"))
TABLE += split_cases("train-tokenizer", "--train", "train")
TABLE += [Case("train-tokenizer", "--teacher", "missing", missing("teacher")),
          Case("train-tokenizer", "--teacher", "garbage-config", inside("teacher", "config.json", garbage)),
          Case("train-tokenizer", "--teacher", "garbage-weights", inside("teacher", "model.safetensors", garbage)),
          Case("train-tokenizer", "--teacher", "config-without-width",
               inside("teacher", "config.json", edit_json(_drop("width")), expect="width"))]
TABLE += spec_cases("train-tokenizer", NOT_JSON, UNKNOWN_KEY,
                    ("wrong-dtype", json.dumps({**TOKENIZER_TRAIN, "latent_channels": "three"}), "latent_channels"),
                    ("nan", json.dumps({**TOKENIZER_TRAIN, "lr": float("nan")}), "lr"))
# a checkpoint from elsewhere: unreadable, cut short or NaN weights must not become a study's tokenizer
TABLE += [Case("import-tokenizer", "--source", "hostile-path", hostile()),
          Case("import-tokenizer", "--source", "garbage-config", inside("tok", "config.json", garbage)),
          Case("import-tokenizer", "--source", "config-not-an-object", inside("tok", "config.json", text("[1]"))),
          Case("import-tokenizer", "--source", "config-wrong-dtype",
               inside("tok", "config.json", edit_json(_set("latent_channels", "three")), expect="latent_channels")),
          Case("import-tokenizer", "--source", "garbage-weights", inside("tok", "model.safetensors", garbage)),
          Case("import-tokenizer", "--source", "truncated-weights", inside("tok", "model.safetensors", half)),
          Case("import-tokenizer", "--source", "nan-weights",
               inside("tok", "model.safetensors", tensors(lambda d: {k: (v * float("nan") if i == 0 else v)
                                                                     for i, (k, v) in enumerate(d.items())})))]
TABLE += spec_cases("import-tokenizer", NOT_JSON, UNKNOWN_KEY, ("no-image-size", '{"name": "x"}', "image_size"),
                    ("other-image-size", '{"image_size": 32}', "image_size"),
                    ("image-size-text", '{"image_size": "big"}', "image_size"))

# --- reconstruction and latents -----------------------------------------------------------------------------
# every command that loads a tokenizer directory (reconstruction, encode, tokenizer-metrics, sample) reads it the same
# way (tokenizers.factory.load_tokenizer); other-architecture: config.json and weights of different networks
TOKENIZER_DIR_CASES = [("missing", missing("tok")), ("hostile-path", hostile()),
                       ("garbage-weights", inside("tok", "model.safetensors", garbage)),
                       ("truncated-weights", inside("tok", "model.safetensors", half)),
                       ("no-weights", inside("tok", "model.safetensors", remove)),
                       ("garbage-config", inside("tok", "config.json", garbage)),
                       ("other-architecture", inside("tok", "config.json", edit_json(_set("latent_channels", 5)),
                                                     expect="model.safetensors"))]
FEATURE_NET_CASES = [("missing", missing("teacher")), ("garbage-config", inside("teacher", "config.json", garbage)),
                     ("garbage-weights", inside("teacher", "model.safetensors", garbage)),
                     ("config-wrong-dtype", inside("teacher", "config.json", edit_json(_set("width", "wide")),
                                                   expect="width"))]
TABLE += [Case("reconstruction", "--tokenizer", label, make) for label, make in TOKENIZER_DIR_CASES]
TABLE += split_cases("reconstruction", "--data", "val")
TABLE += [Case("reconstruction", "--feature-net", label, make) for label, make in FEATURE_NET_CASES]
TABLE += [Case("reconstruction", "--inception-weights", "garbage", at("inception.safetensors", garbage)),
          Case("reconstruction", "--inception-weights", "garbage-pth", at("inception.pth", garbage)),
          Case("reconstruction", "--lpips-weights", "missing", missing("lpips.safetensors")),
          Case("reconstruction", "--lpips-weights", "garbage", at("lpips.safetensors", garbage)),
          Case("reconstruction", "--lpips-weights", "garbage-pth", at("lpips.pth", garbage))]
TABLE += spec_cases("reconstruction", NOT_JSON, UNKNOWN_KEY, ("wrong-dtype", '{"batch_size": "eight"}', "batch_size"),
                    ("zero", '{"batch_size": 0}', "batch_size"))
TABLE += [Case("encode", "--tokenizer", label, make) for label, make in TOKENIZER_DIR_CASES[:4]]
TABLE += split_cases("encode", "--train", "train")
TABLE += split_cases("encode", "--val", "val", [("garbage", garbage), ("no-masks", NO_MASKS),
                                                ("float-images", FLOAT_IMAGES)])
TABLE += spec_cases("encode", NOT_JSON, UNKNOWN_KEY, ("wrong-dtype", '{"batch_size": "eight"}', "batch_size"),
                    ("bad-pooling", '{"mask_pooling": "mean"}', "mask_pooling"),
                    ("nan", '{"mask_threshold": NaN}', "mask_threshold"))
# a latent directory is read by import-latents, latent-metrics, tokenizer-metrics, model-metrics, train-diffusion
# and sample; each picks the rows that reach the files it reads. NaN or zero std would normalise into NaN.
LATENT_DIR_CASES = [  # (label, maker) of a latent directory (train/val/stats.safetensors) spoilt one way
    ("missing", missing("lat")), ("hostile-path", hostile()),
    ("train-garbage", inside("lat", "train.safetensors", garbage)),
    ("train-truncated", inside("lat", "train.safetensors", half)),
    ("train-nan", inside("lat", "train.safetensors", NAN_LATENTS)),
    ("train-int-latents", inside("lat", "train.safetensors", INT_LATENTS)),
    ("train-flat-latents", inside("lat", "train.safetensors", FLAT_LATENTS)),
    ("train-empty", inside("lat", "train.safetensors", EMPTY_LATENTS)),
    ("train-float-labels", inside("lat", "train.safetensors", tensors(lambda d: {**d, "labels": d["labels"].float()}))),
    ("train-labels-out-of-range", inside("lat", "train.safetensors", LATENT_LABELS_OUT_OF_RANGE)),
    ("val-garbage", inside("lat", "val.safetensors", garbage)),
    ("val-nan", inside("lat", "val.safetensors", NAN_LATENTS)),
    ("val-flat-latents", inside("lat", "val.safetensors", FLAT_LATENTS)),
    ("val-no-masks", inside("lat", "val.safetensors", NO_MASKS)),
    ("stats-missing", inside("lat", "stats.safetensors", remove)),
    ("stats-garbage", inside("lat", "stats.safetensors", garbage)),
    ("stats-nan", inside("lat", "stats.safetensors", NAN_STD)),
    ("stats-zero-std", inside("lat", "stats.safetensors", ZERO_STD)),
    ("stats-wrong-shape", inside("lat", "stats.safetensors", SHORT_STATS)),
]


def latent_cases(command: str, labels: list[str], expect: dict[str, str] | None = None) -> list[Case]:
    """The rows of :data:`LATENT_DIR_CASES` named in ``labels`` for ``--latents``/``--source`` of ``command``."""
    arg = "--source" if command == "import-latents" else "--latents"
    chosen = dict(LATENT_DIR_CASES)
    return [Case(command, arg, label, chosen[label]) for label in labels]


ALL_LATENT_LABELS = [label for label, _ in LATENT_DIR_CASES]
TABLE += latent_cases("import-latents", ALL_LATENT_LABELS)
TABLE += [Case("import-latents", "--tokenizer", "missing", missing("tok")),
          Case("import-latents", "--tokenizer", "garbage-config", inside("tok", "config.json", garbage)),
          Case("import-latents", "--tokenizer", "config-without-channels",
               inside("tok", "config.json", edit_json(_drop("latent_channels")), expect="latent_channels"))]
TABLE += spec_cases("import-latents", NOT_JSON, ("no-n-classes", '{"image_size": 16}', "n_classes"),
                    ("image-size-text", '{"image_size": "big", "n_classes": 2}', "image_size"),
                    ("nan-tolerance", '{"image_size": 16, "n_classes": 2, "stats_tolerance": NaN}', "stats_tolerance"),
                    ("unknown-key", '{"image_size": 16, "n_classes": 2, "colour": 1}', "colour"))

# --- latent metrics -----------------------------------------------------------------------------------------
LATENT_FILE_KINDS = [  # a latent file for `metrics` / `predict`
    ("truncated", half), ("garbage", garbage),
    ("huge-header", lambda p, g: p.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")),  # a 1 TB header
    ("int-latents", INT_LATENTS), ("flat-latents", FLAT_LATENTS), ("nan", NAN_LATENTS), ("empty", EMPTY_LATENTS),
    ("no-latents", tensors(lambda d: {"other": d["latents"]})),
    ("float-labels", tensors(lambda d: {**d, "labels": d["labels"].float()})),
    ("label-count", tensors(lambda d: {**d, "labels": d["labels"][:-1]})),
    ("mask-shape", tensors(lambda d: {**d, "masks": d["masks"][:, :4]})),
]
NPZ_KINDS = [("object-npz", lambda p, g: np.savez(p, latents=np.array([object(), 1], dtype=object))),
             ("not-a-zip-npz", lambda p, g: p.write_bytes(b"PK\x03\x04 nonsense")), ("garbage-npz", garbage)]
TABLE += [Case("metrics", "<input>", "missing", missing()), Case("metrics", "<input>", "hostile-path", hostile())]
TABLE += [Case("metrics", "<input>", label, at("latents.safetensors", writer, like="latents"))
          for label, writer in LATENT_FILE_KINDS]
TABLE += [Case("metrics", "<input>", label, at("latents.npz", writer)) for label, writer in NPZ_KINDS]
TABLE += [Case("metrics", "<input>", f"single-class-{metric}",   # one class scores nothing, not a perfect LNC
               at("latents.safetensors", SINGLE_CLASS_LATENTS, like="latents", expect="two classes"),
               extra=(("--metrics", metric),)) for metric in ("lnc", "viv")]
TABLE += [Case("metrics", "--metrics", "unknown-metric", value("lnc,nonsense", "nonsense")),
          Case("metrics", "--param", "negative-k", value("lnc.k=-3", "k")),
          Case("metrics", "--param", "nan-k", value("lnc.k=NaN", "k")),
          Case("metrics", "--train", "garbage", at("train.safetensors", garbage), extra=(("--metrics", "linear_probe"),)),
          Case("metrics", "--train", "no-labels", at("train.safetensors", tensors(_drop("labels", "masks")),
                                                     like="latents", expect="labels"),
               extra=(("--metrics", "linear_probe"),))]
TABLE += latent_cases("latent-metrics", ["missing", "hostile-path", "val-garbage", "val-nan", "val-flat-latents",
                                         "stats-missing", "stats-garbage", "stats-nan", "stats-zero-std",
                                         "stats-wrong-shape"])
TABLE += [Case("latent-metrics", "--latents", "val-truncated", inside("lat", "val.safetensors", half)),
          Case("latent-metrics", "--latents", "val-single-class",
               inside("lat", "val.safetensors", SINGLE_CLASS_LATENTS, expect="two classes")),
          Case("latent-metrics", "--latents", "train-garbage-for-the-probe", inside("lat", "train.safetensors", garbage),
               extra=(("--spec", json.dumps({"enabled": ["linear_probe"]})),))]
TABLE += spec_cases("latent-metrics", NOT_JSON, ("no-enabled", "{}", "enabled"),
                    ("enabled-not-a-list", '{"enabled": "lnc"}', "enabled"),
                    ("unknown-metric", '{"enabled": ["nonsense"]}', "nonsense"),
                    ("params-not-an-object", '{"enabled": ["lnc"], "params": [1]}', "params"))
TABLE += [Case("tokenizer-metrics", "--tokenizer", label, make) for label, make in TOKENIZER_DIR_CASES[:4]]
TABLE += split_cases("tokenizer-metrics", "--data", "val", [("garbage", garbage), ("float-images", FLOAT_IMAGES),
                                                            ("empty", EMPTY_SPLIT)])
TABLE += latent_cases("tokenizer-metrics", ["missing", "val-garbage", "val-flat-latents", "stats-garbage",
                                            "stats-nan", "stats-zero-std", "stats-wrong-shape"])
TABLE += [Case("tokenizer-metrics", "--latents", "val-count",
               inside("lat", "val.safetensors", tensors(lambda d: {k: v[:-2] for k, v in d.items()}))),
          Case("tokenizer-metrics", "--latents", "val-nan-for-ifid", inside("lat", "val.safetensors", NAN_LATENTS),
               extra=(("--spec", json.dumps({"enabled": ["ifid"], "ifid": {"pool": "val"}})),
                      ("--feature-net", "{teacher}"))),
          Case("tokenizer-metrics", "--feature-net", "missing", missing("teacher"),
               extra=(("--spec", json.dumps({"enabled": ["ifid"]})),)),
          Case("tokenizer-metrics", "--feature-net", "garbage-weights", inside("teacher", "model.safetensors", garbage),
               extra=(("--spec", json.dumps({"enabled": ["ifid"]})),)),
          Case("tokenizer-metrics", "--inception-weights", "garbage", at("inception.safetensors", garbage),
               extra=(("--spec", json.dumps({"enabled": ["ifid"], "ifid": {"feature_net": "inception"}})),))]
TABLE += spec_cases("tokenizer-metrics", NOT_JSON, UNKNOWN_KEY, ("no-enabled", "{}", "enabled"),
                    ("wrong-dtype", '{"enabled": ["equivariance"], "batch_size": "many"}', "batch_size"),
                    ("family-not-an-object", '{"enabled": ["equivariance"], "equivariance": [1]}', "equivariance"),
                    ("nan-scale", '{"enabled": ["equivariance"], "equivariance": {"scales": [NaN]}}', "scales"))
# a trained model directory (model-metrics, sample, train-diffusion --import-from); other-width: weights of
# another network than config.json describes
DIFFUSION_DIR_CASES = [("missing", missing("model")), ("hostile-path", hostile()),
                       ("garbage-ema", inside("model", "ema.safetensors", garbage)),
                       ("truncated-ema", inside("model", "ema.safetensors", half)),
                       ("garbage-config", inside("model", "config.json", garbage)),
                       ("config-without-grid", inside("model", "config.json", edit_json(_drop("grid_size")),
                                                      expect="grid_size")),
                       ("config-grid-text", inside("model", "config.json", edit_json(_set("grid_size", "eight")),
                                                   expect="grid_size")),
                       ("other-width", inside("model", "ema.safetensors",
                                              tensors(lambda d: {k: v[..., :1] if v.dim() == 2 else v
                                                                 for k, v in d.items()})))]
TABLE += [Case("model-metrics", "--diffusion", label, make) for label, make in DIFFUSION_DIR_CASES]
TABLE += latent_cases("model-metrics", ["missing", "val-garbage", "val-nan", "val-flat-latents", "stats-garbage",
                                        "stats-nan", "stats-zero-std", "stats-wrong-shape"])
TABLE += [Case("model-metrics", "--latents", "val-labels-out-of-range",
               inside("lat", "val.safetensors", LATENT_LABELS_OUT_OF_RANGE)),
          Case("model-metrics", "--latents", "val-empty", inside("lat", "val.safetensors", EMPTY_LATENTS))]
TABLE += spec_cases("model-metrics", NOT_JSON, UNKNOWN_KEY, ("no-enabled", "{}", "enabled"),
                    ("wrong-dtype", '{"enabled": ["fisher"], "fisher": {"probes": "two"}}', "probes"),
                    ("nan", '{"enabled": ["fisher"], "fisher": {"s_min": NaN}}', "s_min"))

# --- diffusion and sampling ---------------------------------------------------------------------------------
TABLE += latent_cases("train-diffusion", ["missing", "hostile-path", "train-garbage", "train-truncated", "train-nan",
                                          "train-int-latents", "train-flat-latents", "train-empty", "train-float-labels",
                                          "train-labels-out-of-range", "stats-missing", "stats-garbage",
                                          "stats-nan", "stats-zero-std", "stats-wrong-shape"])
TABLE += [Case("train-diffusion", "--import-from", label, make) for label, make in DIFFUSION_DIR_CASES[:6]]
TABLE += spec_cases("train-diffusion", NOT_JSON, ("unknown-key", json.dumps({**DIFFUSION, "colour": 1}), "colour"),
                    ("no-num-classes", '{"steps": 1}', "num_classes"),
                    ("wrong-dtype", json.dumps({**DIFFUSION, "steps": "many"}), "steps"),
                    ("nan", json.dumps({**DIFFUSION, "lr": float("nan")}), "lr"))
TABLE += [Case("sample", "--diffusion", label, make) for label, make in DIFFUSION_DIR_CASES]
# a SiT checkpoint (convert-diffusion): the message names the file, and the key where one is at fault
TABLE += [Case("convert-diffusion", "--source", "missing", missing("sit.pt")),
          Case("convert-diffusion", "--source", "hostile-path", hostile(".pt")),
          Case("convert-diffusion", "--source", "garbage", at("sit.pt", garbage)),
          Case("convert-diffusion", "--source", "truncated", at("sit.pt", half, like="sit")),
          Case("convert-diffusion", "--source", "not-a-state-dict", at("sit.pt", checkpoint(lambda d: list(d)), like="sit")),
          Case("convert-diffusion", "--source", "missing-key",
               at("sit.pt", checkpoint(_drop("blocks.0.mlp.fc1.weight")), like="sit", expect="blocks.0.mlp.fc1.weight")),
          Case("convert-diffusion", "--source", "unknown-key",
               at("sit.pt", checkpoint(_set("blocks.0.attn.q_norm.weight", torch.ones(8))), like="sit",
                  expect="blocks.0.attn.q_norm.weight")),
          Case("convert-diffusion", "--source", "wrong-shape",
               at("sit.pt", checkpoint(_set("blocks.0.attn.proj.weight", torch.ones(16, 8))), like="sit",
                  expect="blocks.0.attn.proj.weight")),
          Case("convert-diffusion", "--heads", "not-dividing", value("3", "--heads 3")),
          Case("convert-diffusion", "--latent-scale", "nan", value("nan", "--latent-scale"))]
TABLE += [Case("sample", "--tokenizer", label, make) for label, make in TOKENIZER_DIR_CASES]
TABLE += latent_cases("sample", ["missing", "hostile-path", "train-garbage", "train-flat-latents", "stats-missing",
                                 "stats-garbage", "stats-nan", "stats-zero-std", "stats-wrong-shape"])
TABLE += spec_cases("sample", NOT_JSON, UNKNOWN_KEY, ("wrong-dtype", '{"num_samples": "two"}', "num_samples"),
                    ("nan", '{"num_steps": NaN}', "num_steps"),
                    ("trajectories", '{"num_samples": 2, "trajectories": 5}', "trajectories"))
# NaN or zero std in stats.safetensors used to decode into NaN latents and write uint8 garbage as samples
TABLE += [Case("sample", "--cfg-scale", "negative", value("-1", "--cfg-scale")),
          Case("sample", "--cfg-scale", "nan", value("nan", "--cfg-scale")),
          Case("sample", "--cfg-scale", "text", value("strong", "--cfg-scale"))]

# --- evaluation ---------------------------------------------------------------------------------------------
SAMPLE_KINDS = [("truncated", half), ("garbage", garbage),
                ("float-images", arrays(lambda d: {**d, "arr_0": d["arr_0"].astype(np.float32)})),
                ("no-colour-axis", arrays(lambda d: {**d, "arr_0": d["arr_0"][..., 0]})),
                ("empty", arrays(lambda d: {**d, "arr_0": d["arr_0"][:0], "labels": d["labels"][:0]})),
                ("no-images", arrays(lambda d: {"labels": d["labels"]})),
                ("label-count", arrays(lambda d: {**d, "labels": d["labels"][:-1]})),
                ("object-npz", lambda p, g: np.savez(p, arr_0=np.array([object(), 1], dtype=object)))]


def sample_cases(command: str, arg: str = "--samples", kinds=SAMPLE_KINDS, extra=()) -> list[Case]:
    cases = [Case(command, arg, "missing", missing("samples.npz"), extra),
             Case(command, arg, "hostile-path", hostile(".npz"), extra)]
    return cases + [Case(command, arg, label, at("samples.npz", writer, like="samples"), extra)
                    for label, writer in kinds]


TABLE += sample_cases("generation-metrics", kinds=SAMPLE_KINDS + [("no-labels", arrays(_drop("labels")))])
TABLE += split_cases("generation-metrics", "--reference", "val", [("garbage", garbage), ("float-images", FLOAT_IMAGES),
                                                                  ("empty", EMPTY_SPLIT)])
# reference statistics: a NaN or wrong-sized mu used to fail inside the Fréchet distance ("second Gaussian")
# without naming the file
STATS_KINDS = [("missing", missing("reference.npz")), ("garbage", at("reference.npz", garbage)),
               ("truncated", at("reference.npz", half, like="stats")),
               ("no-sigma", at("reference.npz", arrays(_drop("sigma")), like="stats", expect="sigma")),
               ("nan-mu", at("reference.npz", arrays(lambda d: {**d, "mu": d["mu"] * np.nan}), like="stats")),
               ("wrong-dimension", at("reference.npz", arrays(lambda d: {**d, "mu": d["mu"][:3],
                                                                         "sigma": d["sigma"][:3, :3]}), like="stats")),
               ("text-mu", at("reference.npz", arrays(lambda d: {**d, "mu": np.array(["a"] * len(d["mu"]))}),
                              like="stats"))]
TABLE += [Case("generation-metrics", "--reference-stats", label, make) for label, make in STATS_KINDS]
TABLE += [Case("generation-metrics", "--feature-net", label, make) for label, make in FEATURE_NET_CASES]
TABLE += [Case("generation-metrics", "--feature-net", "inception-without-weights",
               value("inception", "--inception-weights")),
          Case("generation-metrics", "--inception-weights", "garbage", at("inception.safetensors", garbage),
               extra=(("--feature-net", "inception"),)),
          Case("generation-metrics", "--inception-weights", "wrong-sha256", at("inception.safetensors", garbage),
               extra=(("--feature-net", "inception"), ("--inception-sha256", "0" * 64)))]
TABLE += spec_cases("generation-metrics", NOT_JSON, UNKNOWN_KEY,
                    ("wrong-dtype", '{"batch_size": "eight"}', "batch_size"), ("nan", '{"is_splits": NaN}', "is_splits"))
TABLE += split_cases("reference-stats", "--images", "val", [("garbage", garbage), ("float-images", FLOAT_IMAGES),
                                                           ("no-colour-axis", GREY_IMAGES), ("empty", EMPTY_SPLIT)])
TABLE += [Case("reference-stats", "--feature-net", label, make) for label, make in FEATURE_NET_CASES]
TABLE += [Case("reference-stats", "--feature-net", "inception-without-weights",
               value("inception", "--inception-weights")),
          Case("reference-stats", "--batch-size", "zero", value("0", "--batch-size"))]
TABLE += [Case("reference-stats", "--statistics-from", label, make) for label, make in STATS_KINDS[:4]]
# the checks of trajectory_rows know the tensor, not the file: the command must name the file; no samples used
# to write NaN rows
TRAJECTORY_KINDS = [("truncated", half), ("garbage", garbage),
                    ("nan", tensors(_nan("trajectory"))),
                    ("int", tensors(lambda d: {**d, "trajectory": d["trajectory"].int()})),
                    ("flat", tensors(lambda d: {**d, "trajectory": d["trajectory"][:, 0, 0, 0]})),
                    ("no-samples", tensors(lambda d: {**d, "trajectory": d["trajectory"][:, :0]})),
                    ("one-state", tensors(lambda d: {"trajectory": d["trajectory"][:1], "times": d["times"][:1]})),
                    ("times-count", tensors(lambda d: {**d, "times": d["times"][:2]})),
                    ("times-decreasing", tensors(lambda d: {**d, "times": d["times"].flip(0)})),
                    ("nan-times", tensors(_nan("times"))), ("no-times", tensors(_drop("times")))]
TABLE += [Case("trajectory-metrics", "--trajectories", "missing", missing("traj.safetensors")),
          Case("trajectory-metrics", "--trajectories", "hostile-path", hostile(".safetensors"))]
TABLE += [Case("trajectory-metrics", "--trajectories", label, at("traj.safetensors", writer, like="traj"))
          for label, writer in TRAJECTORY_KINDS]

# --- FDr ----------------------------------------------------------------------------------------------------
TABLE += split_cases("representation-stats", "--images", "val", [("garbage", garbage), ("float-images", FLOAT_IMAGES)])
TABLE += [Case("representation-stats", "--model", "missing", missing("dinov2")),
          Case("representation-stats", "--model", "hostile-path", hostile()),
          Case("representation-stats", "--model", "garbage-config",
               at("dinov2", lambda p, g: (p.mkdir(), garbage(p / "config.json", g)), expect="config.json")),
          Case("representation-stats", "--model", "other-model",
               at("dinov2", lambda p, g: (p.mkdir(), (p / "config.json").write_text('{"model_type": "bert"}')),
                  expect="bert")),
          Case("representation-stats", "--space", "unknown", value("resnet", "--space")),
          Case("representation-stats", "--batch-size", "zero", value("0", "--batch-size"))]
TABLE += sample_cases("representation-metrics", kinds=SAMPLE_KINDS[:4])


def _space(make_stats):
    def make(t: Path, g):
        stats, expect = make_stats(t, g)
        return ["dinov2", str(g.root / "dinov2"), str(stats)], expect
    return make


TABLE += [Case("representation-metrics", "--space", label, _space(make)) for label, make in
          [("stats-missing", missing("dinov2.npz")), ("stats-hostile-path", hostile(".npz")),
           ("stats-garbage", at("dinov2.npz", garbage)), ("stats-truncated", at("dinov2.npz", half, like="rep_stats")),
           ("stats-of-another-space", at("dinov2.npz", arrays(_set("space", np.array("clip"))), like="rep_stats")),
           ("stats-without-sigma", at("dinov2.npz", arrays(_drop("sigma")), like="rep_stats"))]]
TABLE += [Case("representation-metrics", "--space", "model-missing",
               lambda t, g: (["dinov2", str(t / "nowhere"), str(g.rep_stats)], str(t / "nowhere")))]
TABLE += [Case("representation-metrics", "--inception-rows", label, make) for label, make in
          [("missing", missing("rows.parquet")), ("garbage", at("rows.parquet", garbage)),
           ("truncated", at("rows.parquet", half, like="inception_rows")),
           ("no-fd-row", at("rows.parquet", table(lambda f: f.assign(metric="is")), like="inception_rows")),
           ("no-params-column", at("rows.parquet", table(lambda f: f.drop(columns="params")), like="inception_rows")),
           ("garbage-params", at("rows.parquet", table(lambda f: f.assign(params="{x")), like="inception_rows")),
           ("nan-fd", at("rows.parquet", table(lambda f: f.assign(value=float("nan"))), like="inception_rows")),
           ("domain-fd", at("rows.parquet", table(lambda f: f.assign(params='{"feature_net": "domain"}')),
                            like="inception_rows", expect="feature net"))]]
TABLE += spec_cases("representation-metrics", NOT_JSON, UNKNOWN_KEY,
                    ("wrong-dtype", '{"batch_size": "big"}', "batch_size"))

# --- analysis -----------------------------------------------------------------------------------------------
RESULT_ROWS = "results/metrics/tok0/latent.parquet"


def rows_file(kind: str, path: str, writer: Writer, like_rows: bool = True):
    """A per-job rows file at the layout's relative ``path`` (the case runs in its own folder)."""
    def make(t: Path, g):
        target = t / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if like_rows:
            write_parquet(_rows({"lnc": 0.5}), target)
        writer(target, g)
        return [path], path
    return make


def tokenizer_config(edit):
    """tok/config.json of the good tokenizer, edited (aggregate reads each tokenizer's real architecture)."""
    def make(t: Path, g):
        path = t / "tok" / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps(edit(json.loads((g.tok / "config.json").read_text()))))
        return [path], str(path)
    return make


AGGREGATE_KINDS = {"metrics": "results/metrics/tok0/latent.parquet",
                   "reconstruction": "results/reconstruction/tok0.parquet",
                   "tokenizer-metrics": "results/metrics/tok0/tokenizer.parquet",
                   "model-metrics": "results/metrics/tok0/sit/model.parquet",
                   "generation": "results/generation/tok0/sit/seed0/cfg1.00.parquet",
                   "trajectory": "results/trajectory/tok0/sit/seed0/cfg1.00.parquet",
                   "untrained": "results/generation/tok0/sit/untrained.parquet"}
TABLE += [Case("aggregate", f"--{kind}", "garbage", rows_file(kind, path, garbage))
          for kind, path in AGGREGATE_KINDS.items()]
TABLE += [Case("aggregate", "--metrics", "missing", rows_file("metrics", RESULT_ROWS, remove)),
          Case("aggregate", "--metrics", "truncated", rows_file("metrics", RESULT_ROWS, half)),
          Case("aggregate", "--metrics", "no-value-column",
               rows_file("metrics", RESULT_ROWS, table(lambda f: f.drop(columns="value")))),
          Case("aggregate", "--metrics", "not-a-results-path",
               lambda t, g: ([str(t / HOSTILE)], HOSTILE)),
          Case("aggregate", "--tokenizer-configs", "garbage", at("config.json", garbage)),
          Case("aggregate", "--tokenizer-configs", "missing", missing("config.json")),
          Case("aggregate", "--tokenizer-configs", "without-architecture", tokenizer_config(_drop("architecture")),
               extra=(("--spec", json.dumps({"tokenizers": {"tok": {"regularizer": "none"}}, "config": {}})),)),
          Case("aggregate", "--tokenizer-configs", "channels-as-text",
               tokenizer_config(_set("latent_channels", "three")),
               extra=(("--spec", json.dumps({"tokenizers": {"tok": {"regularizer": "none"}}, "config": {}})),))]
TABLE += spec_cases("aggregate", NOT_JSON, ("no-tokenizers-key", "{}", "tokenizers"),
                    ("tokenizers-not-an-object", '{"tokenizers": [1]}', "tokenizers"))


def tables_with(name: str, writer: Writer, expect: str | None = None):
    """A copy of the study's tables whose ``name``.parquet is spoilt."""
    return inside("tables", f"{name}.parquet", writer, expect)


# the analysis commands read the aggregate step's tables: one of an older version or edited by hand lacks a
# column or holds text where numbers belong, and used to end in a KeyError deep inside the analysis
TABLES_CASES = {
    "missing-folder": missing("tables"), "hostile-path": hostile(),
    "generation-garbage": tables_with("generation", garbage),
    "generation-truncated": tables_with("generation", half),
    "generation-missing": tables_with("generation", remove),
    "generation-without-backbone": tables_with("generation", table(lambda f: f.drop(columns="backbone")),
                                               expect="backbone"),
    "generation-empty": tables_with("generation", table(lambda f: f.iloc[:0]), expect="generation"),
    "generation-value-as-text": tables_with("generation", table(lambda f: f.assign(value="high")), expect="value"),
    "tokenizers-garbage": tables_with("tokenizers", garbage),
    "tokenizers-without-family": tables_with("tokenizers", table(lambda f: f.drop(columns=["family", "regularizer"])),
                                             expect="tokenizers"),
    "metrics-garbage": tables_with("metrics", garbage),
    "metrics-without-metric": tables_with("metrics", table(lambda f: f.drop(columns="metric")), expect="metric"),
}
TABLE += [Case("correlate", "--tables", label, TABLES_CASES[label]) for label in TABLES_CASES]
TABLE += spec_cases("correlate", NOT_JSON, ("bootstrap-text", '{"bootstrap": "many"}', "bootstrap"),
                    ("guidance-range-reversed", '{"guidance_range": [2.0, 1.0]}', "guidance_range"),
                    ("guidance-range-text", '{"guidance_range": "wide"}', "guidance_range"),
                    ("unknown-target", '{"target": "nonsense"}', "nonsense"))
TABLE += [Case("figures", "--tables", label, TABLES_CASES[label]) for label in
          ["generation-garbage", "generation-truncated", "generation-without-backbone", "tokenizers-garbage",
           "metrics-without-metric"]]
TABLE += [Case("figures", "--tables", "correlations-garbage", tables_with("correlations", garbage))]
TABLE += [Case("summarize", "--tables", label, TABLES_CASES[label]) for label in
          ["missing-folder", "hostile-path", "generation-garbage", "generation-missing", "generation-without-backbone",
           "tokenizers-without-family", "metrics-without-metric"]]
TABLE += [Case("summarize", "--tables", "correlations-garbage", tables_with("correlations", garbage))]
TABLE += [Case("predictions", "--tables", label, TABLES_CASES[label]) for label in
          ["missing-folder", "hostile-path", "generation-garbage", "generation-missing", "generation-without-backbone",
           "generation-empty", "tokenizers-without-family", "metrics-garbage", "metrics-without-metric"]]
TABLE += spec_cases("predictions", NOT_JSON, ("unknown-target", '{"target": "nonsense"}', "nonsense"))
TABLE += [Case("predict", "<latents>", "missing", missing()), Case("predict", "<latents>", "hostile-path", hostile())]
TABLE += [Case("predict", "<latents>", label, at("latents.safetensors", writer, like="latents"))
          for label, writer in LATENT_FILE_KINDS[:8]]
TABLE += [Case("predict", "<latents>", "garbage-npz", at("latents.npz", garbage))]
TABLE += [Case("predict", "--study", label, TABLES_CASES[label]) for label in
          ["missing-folder", "hostile-path", "generation-garbage", "generation-without-backbone", "generation-empty",
           "tokenizers-without-family", "metrics-garbage", "metrics-without-metric"]]
TABLE += [Case("predict", "--study", "tokenizers-without-image-size",
               tables_with("tokenizers", table(lambda f: f.drop(columns="image_size")), expect="image_size")),
          Case("predict", "--target", "unknown", value("nonsense", "nonsense"))]

# --- plan ---------------------------------------------------------------------------------------------------
# the profile is YAML a user edits by hand: its syntax and its gpu counts are input too
TABLE += [Case("plan", "--configfile", "missing", missing("config.yaml")),
          Case("plan", "--configfile", "hostile-path", hostile(".yaml")),
          Case("plan", "--configfile", "garbage", at("config.yaml", garbage)),
          Case("plan", "--configfile", "not-yaml", at("config.yaml", text("a: [1, 2\nb: {"))),
          Case("plan", "--configfile", "a-list", at("config.yaml", text("- 1\n- 2\n"))),
          Case("plan", "--configfile", "empty", at("config.yaml", text(""))),
          Case("plan", "--configfile", "wrong-dtype", at("config.yaml", lambda p, g: p.write_text(
              g.config.read_text().replace("num_steps: 8", "num_steps: eight")), expect="num_steps")),
          Case("plan", "--configfile", "nan", at("config.yaml", lambda p, g: p.write_text(
              g.config.read_text().replace("num_steps: 8", "num_steps: .nan")), expect="num_steps")),
          Case("plan", "--profile", "missing", missing("profile")),
          Case("plan", "--profile", "garbage", at("profile.yaml", garbage)),
          Case("plan", "--profile", "not-yaml", at("profile.yaml", text("set-resources: [1, 2\n"))),
          Case("plan", "--profile", "gpu-as-text",
               at("profile.yaml", text("set-resources:\n  sample:\n    gpu: two\n"), expect="gpu")),
          Case("plan", "--profile", "resources-a-list", at("profile.yaml", text("set-resources: [1, 2]\n"),
                                                            expect="set-resources"))]


# ----------------------------------------------------------------------------- running a case

def _command_line(command: str, g: SimpleNamespace, t: Path, changes=()) -> list[str]:
    """The valid command line of ``command`` (outputs under ``t/out``) with the (argument, value) ``changes``."""
    pairs = GOOD[command](g, t / "out")
    for arg, new in changes:
        new = str(g.teacher) if new == "{teacher}" else new
        index = next((i for i, (name, _) in enumerate(pairs) if name == arg), None)
        if index is None:
            pairs.append((arg, new))
        else:
            pairs[index] = (arg, new)
    argv = [command]
    for arg, new in pairs:
        values = [str(v) for v in new] if isinstance(new, list) else [str(new)]
        argv += values if arg.startswith("<") else [arg, *values]
    return argv


def _argv(case: Case, g: SimpleNamespace, t: Path) -> tuple[list[str], str]:
    """The case's command line (its bad input written under ``t``) and the text its message must contain."""
    bad, expect = case.make(t, g)
    return _command_line(case.command, g, t, [(case.arg, bad), *case.extra]), expect


def _run(argv, capsys) -> tuple[object, str, str]:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback is a failure of the case, reported as such
        import traceback

        status = f"uncaught {type(exc).__name__}: {exc}\n{''.join(traceback.format_exc()[-1500:])}"
    captured = capsys.readouterr()
    return status, captured.err, captured.out


@pytest.mark.parametrize("case", TABLE, ids=[case.id for case in TABLE])
def test_bad_input_exits_2_naming_it(case, good, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)   # relative results paths (aggregate) and anything a shell would create land here
    argv, expect = _argv(case, good, tmp_path)
    status, err, out = _run(argv, capsys)
    assert status == 2, f"exit {status}: {err[-1500:]}"
    assert "Traceback" not in err, err[-1500:]
    assert expect in err, f"{expect!r} not named in: {err[-1500:]}"
    written = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert not written, f"wrote {written} from a bad input"
    assert not out, f"printed a result: {out[:500]}"
    assert not any((tmp_path / name).exists() for name in ("PWNED", "PWNED2"))


def test_every_command_has_rows_in_the_table():
    """A command added to cli.COMMAND_MODULES without bad-input rows fails here (and a stale GOOD entry too)."""
    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    assert commands == set(GOOD)
    assert commands == {case.command for case in TABLE}
    assert len({case.id for case in TABLE}) == len(TABLE), "two rows with one id"


# Every command must succeed on the good neighbours, so each row of the table fails for its one bad input only;
# representation-stats is the exception: its --model is a transformers save_pretrained folder this module does not
# build (its rows spoil the images, or the model folder itself, which is read before any model runs).
WITH_NEIGHBOURS = sorted(set(GOOD) - {"representation-stats"})


@pytest.mark.parametrize("command", WITH_NEIGHBOURS)
def test_the_neighbours_are_valid(command, good, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err, out = _run(_command_line(command, good, tmp_path), capsys)
    assert status == 0, f"exit {status}: {err[-2000:]}"
    # the same outputs the table's rows must leave empty are written here (plan prints its table instead)
    assert any(p.is_file() for p in (tmp_path / "out").rglob("*")) or (command == "plan" and "total" in out)


def test_the_console_command_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "garbage.safetensors"
    garbage(path, None)
    result = subprocess.run([sys.executable, "-m", "diffusability", "metrics", str(path), "--metrics", "lnc",
                             "--out", str(tmp_path / "o.parquet")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "garbage.safetensors" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_all_computes_what_small_inputs_allow_and_says_what_it_skipped(tmp_path, capsys):
    """Fault finding 7: on an 8×8 grid SRSS's 64/64 token filter and uniformity's n = 10,000 cannot hold;
    `all` leaves them out and names why, while asking for srss by name still fails naming the reason."""
    from diffusability.io import parquet_metadata

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    latents = torch.randn(60, 4, 8, 8, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    masks = torch.zeros(60, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    path = tmp_path / "small.safetensors"
    save_tensors(path, {"latents": latents, "labels": labels, "masks": masks})
    out = tmp_path / "o.parquet"
    status, err, _ = _run(["metrics", str(path), "--metrics", "all", "--param", "viv_marginal.draws=50",
                           "--param", "viv.nodes=8", "--out", str(out)], capsys)
    assert status == 0, err
    result = pd.read_parquet(out)
    assert {"lnc", "sec", "viv_uniform"} <= set(result["metric"])
    assert not {"srss", "uniformity_cv"} & set(result["metric"])
    assert "skipped srss" in err and "min_fg=64" in err and "skipped uniformity_cv" in err
    assert "srss" in json.loads(parquet_metadata(out)["skipped"])
    status, err, _ = _run(["metrics", str(path), "--metrics", "srss", "--out", str(tmp_path / "p.parquet")], capsys)
    assert status == 2 and "min_fg=64" in err
