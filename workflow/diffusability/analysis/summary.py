"""A readable Markdown summary of a run: what was trained, how well, what correlates."""

from __future__ import annotations

import math

import pandas as pd


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub-Markdown table of ``frame`` (no tabulate dependency)."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else format(value, floatfmt)
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def mixed_code_warnings(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Warning lines for every table whose rows were made by different versions of one command's code."""
    from .tables import mixed_code

    lines = []
    for name, frame in tables.items():
        for command, identities in mixed_code(frame).items():
            lines.append(f"> **Warning:** `{name}` mixes rows made by different code of `{command}` "
                         f"({', '.join(identities)}): rerun the workflow so every row comes from the current code.")
    return lines + [""] if lines else []


def summarize(tables: dict[str, pd.DataFrame], target: str, provenance: dict[str, str]) -> str:
    tokenizers, reconstruction = tables["tokenizers"], tables["reconstruction"]
    metrics, generation = tables["metrics"], tables["generation"]
    correlations, regressions = tables["correlations"], tables["regressions"]
    lines = ["# diffusability — run summary", ""]
    lines += [f"- package {provenance.get('diffusability_version', '?')}, commit "
              f"`{provenance.get('git_commit', '?')[:12]}`, config sha256 `{provenance.get('config_sha256', '?')[:12]}`",
              f"- {len(tokenizers)} tokenizers, {generation['backbone'].nunique()} backbone(s), guidance scales "
              f"{sorted(generation.loc[generation['model'] == 'trained', 'cfg_scale'].unique().tolist())}", ""]
    lines += mixed_code_warnings(tables)

    lines += ["## Tokenizers", "", markdown_table(tokenizers[["tokenizer", "family", "regularizer", "kl_weight",
                                                           "latent_channels", "downsample"]]), ""]

    lines += ["## Reconstruction (trained vs untrained)", ""]
    rec = reconstruction.pivot_table(index="tokenizer", columns="metric", values="value", aggfunc="first")
    lines += [markdown_table(rec.reset_index()), ""]

    lines += [f"## Generation ({target}, lower is better; untrained = the same backbone before training, cfg 1)", ""]
    gen = generation[generation["metric"] == target].copy()
    gen["column"] = gen.apply(lambda r: "untrained" if r["model"] == "untrained" else f"cfg {r['cfg_scale']:g}", axis=1)
    wide = gen.pivot_table(index=["tokenizer", "backbone"], columns="column", values="value", aggfunc="first")
    lines += [markdown_table(wide.reset_index()), ""]

    lines += ["## Latent metrics (validation latents, normalised as the diffusion model sees them)", ""]
    from .correlations import scalar_rows

    metrics = scalar_rows(metrics)
    lat = metrics.pivot_table(index="metric", columns="tokenizer", values="value", aggfunc="first")
    direction = metrics.groupby("metric")["direction"].first()
    lat.insert(0, "better", direction.reindex(lat.index))
    lines += [markdown_table(lat.reset_index()), ""]

    lines += [f"## Correlation with generation {target} (Pearson r, 95 % CI, p)", ""]
    if correlations.empty:
        lines += ["(not enough tokenizers for a correlation: at least 4 are needed)", ""]
    else:
        pearson = correlations[correlations["method"] == "pearson"].copy()
        pearson = pearson.sort_values(["backbone", "cfg_scale", "r"], key=lambda s: s if s.name != "r" else -s.abs())
        pearson["CI95"] = pearson.apply(lambda r: f"[{r.ci95_low:.2f}, {r.ci95_high:.2f}]", axis=1)
        lines += [markdown_table(pearson[["family", "backbone", "cfg_scale", "proxy", "direction", "n", "r", "CI95",
                                          "p_val"]], floatfmt=".3g"), ""]
    if not regressions.empty:
        lines += [f"## Best two-metric OLS fits of {target} (R²)", ""]
        best = regressions.sort_values("r2", ascending=False).groupby(["family", "backbone", "cfg_scale"]).head(5)
        lines += [markdown_table(best[["family", "backbone", "cfg_scale", "proxy_1", "proxy_2", "n", "r2",
                                       "adj_r2"]], floatfmt=".3g"), ""]
    lines += prediction_section(tables.get("prediction_scores"), target)
    return "\n".join(lines)


def prediction_section(scores: pd.DataFrame | None, target: str) -> list[str]:
    """Out-of-cluster scores per backbone and scale: the nested selection, the selected and the best single model."""
    lines = [f"## Predicting {target} from latent proxies, one cluster held out", ""]
    if scores is None or scores.empty:
        return lines + ["(no leave-one-cluster-out test: it needs ≥ 4 tokenizers in ≥ 3 clusters, and every training "
                        "fold one tokenizer more than the model has coefficients)", ""]
    lines += ["Each cluster of tokenizers (its regularizer) is predicted by OLS fits on the other clusters only. "
              "`nested selection` chooses the model inside each fold (the honest score of choosing); the `selected` "
              "model is the best of all single- and two-proxy models on the same folds, so its R² is optimistic. "
              "Intervals (90 %): R² by cluster bootstrap, ρ by Fisher z, coverage by Clopper–Pearson; coverage of "
              "the 90 % prediction intervals should be near 0.9.", ""]
    from .predict import NESTED

    rows = []
    for _, group in scores.groupby(["backbone", "cfg_scale"], sort=True):
        singles = group[group["n_proxies"] == 1].sort_values("r2_oc", ascending=False).head(1)
        picked = pd.concat([group[group["model"] == NESTED], group[group["selected"]], singles])
        rows.append(picked.drop_duplicates("model"))
    table = pd.concat(rows, ignore_index=True)
    table["role"] = table.apply(lambda r: "nested" if r["model"] == NESTED else "selected" if r["selected"]
                                else "best single", axis=1)
    for name in ("r2_oc", "spearman", "coverage"):
        low, high = (f"{name}_low", f"{name}_high")
        table[f"{name} 90 %"] = table.apply(lambda r: f"[{r[low]:.2f}, {r[high]:.2f}]", axis=1)
    return lines + [markdown_table(table[["backbone", "cfg_scale", "role", "model", "n", "n_clusters", "r2_oc",
                                          "r2_oc 90 %", "spearman_oc", "spearman 90 %", "coverage",
                                          "coverage 90 %"]], floatfmt=".3g"), ""]
