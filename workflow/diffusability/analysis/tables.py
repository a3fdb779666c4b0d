"""Per-job result rows → the study's tables (tidy pandas DataFrames).

Every per-job file is a tidy Parquet table of result rows (:mod:`diffusability.rows`: metric, value,
direction, params, n).
Aggregation adds the keys the file belongs to (tokenizer, backbone, guidance scale) and concatenates.
Each function takes ``(path, keys)`` pairs: the ``aggregate`` command parses the keys from the paths
with the workflow's layout (:func:`diffusability.workflow.layout.keyed`), so this module does not know
where the workflow puts its files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import require
from ..rows import ROW_COLUMNS as _ROWS

ROW_COLUMNS = list(_ROWS)


def read_rows(path: str) -> pd.DataFrame:
    """One per-job rows file, checked against the tidy schema."""
    from ..io import read_parquet

    frame = read_parquet(path)
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    require(not missing, f"{path}: missing columns {missing} (expected {ROW_COLUMNS})")
    return frame[ROW_COLUMNS]


#: the columns the analysis commands (correlate, figures, summarize, predictions, predict) read from each table
#: the aggregate step writes; a table without one of them is refused naming the file and the column
STUDY_COLUMNS = {
    "tokenizers": ("tokenizer", "family"),
    "reconstruction": ("tokenizer", *ROW_COLUMNS),
    "metrics": ("tokenizer", *ROW_COLUMNS),
    "generation": ("tokenizer", "backbone", "cfg_scale", "model", *ROW_COLUMNS),
}


def read_study_table(directory, name: str, columns: Iterable[str] = ()) -> pd.DataFrame:
    """The study table ``directory/name.parquet``, checked to have :data:`STUDY_COLUMNS` (and ``columns``)
    with numeric ``value`` and ``cfg_scale``: a table of another version or a hand-edited one ends the command
    with the file and the column named, not with a KeyError deep inside the analysis."""
    from ..io import read_parquet

    path = Path(directory) / f"{name}.parquet"
    frame = read_parquet(path)
    wanted = [*STUDY_COLUMNS.get(name, ()), *columns]
    missing = [c for c in dict.fromkeys(wanted) if c not in frame.columns]
    require(not missing, f"{path}: missing columns {missing} (the {name} table of the aggregate step)")
    for column in ("value", "cfg_scale"):
        if column in wanted:
            require(pd.api.types.is_numeric_dtype(frame[column]),
                    f"{path}: column {column!r} must be numeric, got {frame[column].dtype}")
    return frame


#: the study tables a predictor needs: tokenizers (clusters, latent shapes), metrics (proxies), generation (targets)
PREDICTOR_TABLES = ("tokenizers", "metrics", "generation")


def read_predictor_tables(directory) -> dict[str, pd.DataFrame]:
    """The study tables of :data:`PREDICTOR_TABLES` in ``directory``, by name, each checked as :func:`read_study_table`."""
    return {name: read_study_table(directory, name) for name in PREDICTOR_TABLES}


#: what made each row, from its per-job file's provenance (docs/architecture.md §7.4): the command and a hash of
#: its package code, of its config slice, of its input files' SHA-256s, of the installed package versions, and
#: the device it ran on. Equal runs give equal values ("unknown" where an older file records none).
PROVENANCE_COLUMNS = ("code_identity", "config_sha256", "inputs_sha256", "software_identity", "device")


def row_provenance(path: str) -> dict[str, str]:
    """The :data:`PROVENANCE_COLUMNS` of the rows of one per-job Parquet file, from its metadata.

    ``code_identity`` is ``command:hash``; ``inputs_sha256`` is the SHA-256 of the key-sorted JSON of the
    file's ``{input: SHA-256}`` record, so two rows made from the same input files carry the same value.
    """
    import hashlib

    from ..io import parquet_metadata

    meta = parquet_metadata(path)
    inputs = meta.get("inputs")
    return {"code_identity": f"{meta.get('command', '?')}:{meta.get('code_identity', 'unknown')}",
            "config_sha256": meta.get("config_sha256", "unknown"),
            "inputs_sha256": hashlib.sha256(inputs.encode()).hexdigest() if inputs is not None else "unknown",
            "software_identity": meta.get("software_identity", "unknown"),
            "device": meta.get("device", "unknown")}


def mixed_code(frame: pd.DataFrame, column: str = "code_identity") -> dict[str, list[str]]:
    """{command: values} for every command whose rows in ``frame`` differ in a provenance ``column``.

    With ``code_identity`` (the default): rows made by different code, i.e. numbers of old and new code side
    by side (e.g. a metric fixed after some tokenizers were scored); with ``software_identity``: rows made
    with different package versions. The summary warns about both.
    """
    if "code_identity" not in frame.columns or column not in frame.columns or frame.empty:
        return {}
    parts = frame["code_identity"].astype(str).str.split(":", n=1)
    commands = parts.str[0]
    values = parts.str[1] if column == "code_identity" else frame[column].astype(str)
    mixed = {}
    for command, group in values.groupby(commands):
        distinct = sorted(set(group))
        if len(distinct) > 1:
            mixed[command] = distinct
    return mixed


Keyed = Iterable[tuple[str, tuple[str, ...]]]
"""``(path, keys)`` pairs of per-job rows files: the keys (tokenizer[, backbone[, guidance scale]]) of each."""


def _concat(keyed: Keyed, keys: tuple[str, ...]) -> pd.DataFrame:
    frames = []
    for path, values in keyed:
        frame = read_rows(path)
        for key, value in zip(keys, values):
            frame.insert(len(frame.columns) - len(ROW_COLUMNS), key, value)
        for column, value in row_provenance(path).items():
            frame[column] = value
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*keys, *ROW_COLUMNS, *PROVENANCE_COLUMNS])
    return pd.concat(frames, ignore_index=True)


def tokenizer_table(spec: dict[str, dict], config_paths: Iterable[str] = ()) -> pd.DataFrame:
    """One row per tokenizer: its name, family and the settings that distinguish it.

    ``config_paths``: the tokenizers' own ``config.json`` files (``<name>/config.json``). Their
    architecture, latent channels and downsampling replace the study config's values — a pretrained
    entry's come from its checkpoint — and name the family (``conv-f16d32``) when the study sets none.
    """
    from ..tokenizers.spec import downsample_factor
    from ..io import read_json

    actual = {Path(path).parent.name: (path, read_json(path)) for path in config_paths}
    rows = []
    for name, entry in sorted(spec.items()):
        require(isinstance(entry, dict), f"--spec: tokenizers.{name} must be an object, got {entry!r}")
        row = {"tokenizer": name, **entry}
        if name in actual:
            path, built = actual[name]
            _check_tokenizer_config(built, path)
            row.update(architecture=built["architecture"], latent_channels=int(built["latent_channels"]),
                       downsample=int(downsample_factor(built)))
        if not row.get("family"):
            row["family"] = f"{row['architecture']}-f{row['downsample']}d{row['latent_channels']}"
        row["regularizer_params"] = _json(entry.get("regularizer_params", {}))
        rows.append(row)
    return pd.DataFrame(rows)


def _check_tokenizer_config(config, path) -> None:
    """A tokenizer's config.json has what the tokenizers table reads from it (an error naming the file and key)."""
    require(isinstance(config, dict), f"{path}: expected a JSON object (a tokenizer spec)")
    vit = config.get("architecture") == "vit"
    for key, kind in (("architecture", str), ("latent_channels", int),
                      ("patch_size", int) if vit else ("channel_mult", list)):
        value = config.get(key)
        require(isinstance(value, kind) and not isinstance(value, bool),
                f"{path}: '{key}' must be {kind.__name__ if kind is not int else 'an integer'}, got {value!r}")


def _json(value) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def reconstruction_table(keyed: Keyed) -> pd.DataFrame:
    """Reconstruction rows of each tokenizer (``keyed``: ``(path, (tokenizer,))`` pairs)."""
    return _concat(keyed, ("tokenizer",))


def metrics_table(latent: Keyed, tokenizer: Keyed = (), model: Keyed = ()) -> pd.DataFrame:
    """Latent-metric rows, plus those of the tokenizer_metrics and model_metrics steps.

    ``latent`` and ``tokenizer`` are keyed by ``(tokenizer,)``, ``model`` by ``(tokenizer, backbone)``.

    Columns: tokenizer, metric, value, direction, params, n, the :data:`PROVENANCE_COLUMNS`, backbone; ``backbone`` (last, so
    the columns before it keep their places) names the diffusion model of a model-based row (e.g.
    ``fi_model``) and is "" for rows of the tokenizer alone.
    """
    frames = []
    for keyed in (latent, tokenizer):
        frame = _concat(keyed, ("tokenizer",))
        frame["backbone"] = ""
        frames.append(frame)
    frame = _concat(model, ("tokenizer", "backbone"))
    frames.append(frame[[c for c in frame.columns if c != "backbone"] + ["backbone"]])
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    return table.astype({"backbone": str})


def generation_table(generation: Keyed, representation: Keyed = (), trajectory: Keyed = (),
                     untrained: Keyed = ()) -> pd.DataFrame:
    """Generation rows of trained models (+ FDr and trajectory metrics) and of untrained baselines.

    ``generation``, ``representation`` (a sample set's FDr rows: fd_<space>, fdr_<space>, fdr6) and
    ``trajectory`` are keyed by ``(tokenizer, backbone, seed, cfg)``, ``untrained`` by ``(tokenizer, backbone)``.
    Columns: tokenizer, backbone, cfg_scale (float), model ("trained"/"untrained"), seed (int: the seed
    repeat of the model and its samples, 0 for an untrained baseline), metric, …
    """
    frames = []
    for keyed in (generation, representation, trajectory):
        frame = _concat(keyed, ("tokenizer", "backbone", "seed", "cfg"))
        frame.insert(2, "cfg", frame.pop("cfg"))
        frame.insert(3, "model", "trained")
        frames.append(frame)
    frame = _concat(untrained, ("tokenizer", "backbone"))
    frame.insert(2, "cfg", "1.00")
    frame.insert(3, "model", "untrained")
    frame.insert(4, "seed", "0")
    frames.append(frame)
    # a study without generation rows (yet) gets an empty table with the columns, as metrics_table does
    table = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    table.insert(2, "cfg_scale", table.pop("cfg").astype(float))
    return table.astype({"seed": int})
