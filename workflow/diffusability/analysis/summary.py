"""A readable Markdown summary of a run: what was trained, how well, what correlates."""

from __future__ import annotations

import math

import numpy as np
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
    """Warning lines for every table whose rows were made by different versions of one command's code or
    with different package versions."""
    from .tables import mixed_code

    lines = []
    for name, frame in tables.items():
        for command, identities in mixed_code(frame).items():
            lines.append(f"> **Warning:** `{name}` mixes rows made by different code of `{command}` "
                         f"({', '.join(identities)}): rerun the workflow so every row comes from the current code.")
        for command, identities in mixed_code(frame, "software_identity").items():
            lines.append(f"> **Warning:** `{name}` mixes rows of `{command}` made with different package versions "
                         f"(software identities {', '.join(i[:12] for i in identities)}; each row's versions are in "
                         "its per-job file's provenance).")
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
    # seed repeats: the mean over seeds (their spread is in the seed-noise section)
    wide = gen.pivot_table(index=["tokenizer", "backbone"], columns="column", values="value", aggfunc="mean")
    lines += [markdown_table(wide.reset_index()), ""]

    lines += ["## Latent metrics (validation latents, normalised as the diffusion model sees them)", ""]
    from .correlations import scalar_rows

    metrics = scalar_rows(metrics)
    lat = metrics.pivot_table(index="metric", columns="tokenizer", values="value", aggfunc="first")
    direction = metrics.groupby("metric")["direction"].first()
    lat.insert(0, "better", direction.reindex(lat.index))
    lines += [markdown_table(lat.reset_index()), ""]

    lines += perspectives_section(tables.get("perspectives"), correlations, target)
    lines += [f"## Correlation with generation {target} (Pearson r, 95 % CI, p)", ""]
    if correlations.empty:
        lines += ["(not enough tokenizers for a correlation: at least 4 are needed)", ""]
    else:
        lines += correlation_table(correlations, target)
    lines += secondary_section(correlations, target)
    lines += guidance_section(tables.get("guidance_optima"), tables.get("guidance_correlations"), target)
    lines += pairs_section(tables.get("perspective_pairs"), target)
    lines += seeds_section(tables.get("seeds"), target)
    if not regressions.empty:
        lines += [f"## Best two-metric OLS fits of {target} (R²)", ""]
        best = regressions.sort_values("r2", ascending=False).groupby(["family", "backbone", "cfg_scale"]).head(5)
        lines += [markdown_table(best[["family", "backbone", "cfg_scale", "proxy_1", "proxy_2", "n", "r2",
                                       "adj_r2"]], floatfmt=".3g"), ""]
    lines += prediction_section(tables.get("prediction_scores"), target)
    lines += figures_section()
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
                                          "coverage 90 %"]], floatfmt=".3g"), "",
                    # the figure of the predictions rule (results/prediction/, beside this report's results/)
                    f"![{target}: predicted out of cluster vs observed](prediction/predicted_vs_observed.png)", ""]


# --------------------------------------------------------------------------- the study's analysis (docs/analysis.md)


def _interval(low, high) -> str:
    return "" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.2f}, {high:.2f}]"


def _sign(value) -> str:
    return "" if pd.isna(value) else ("yes" if bool(value) else "NO")


def correlation_table(correlations: pd.DataFrame, target: str) -> list[str]:
    """Pearson r with its Fisher-z and bootstrap intervals, the direction check, and Spearman ρ, per proxy."""
    rows = correlations[correlations["target"] == target] if "target" in correlations.columns else correlations
    pearson = rows[rows["method"] == "pearson"].copy()
    keys = ["family", "backbone", "cfg_scale", "proxy"]
    spearman = rows[rows["method"] == "spearman"].set_index(keys)
    pearson["CI95"] = [_interval(a, b) for a, b in zip(pearson["ci95_low"], pearson["ci95_high"])]
    pearson["boot95"] = [_interval(a, b) for a, b in zip(pearson.get("boot_low", np.nan), pearson.get("boot_high", np.nan))]
    pearson["sign as predicted"] = [_sign(v) for v in pearson.get("sign_ok", pd.Series(pd.NA, index=pearson.index))]
    index = pd.MultiIndex.from_frame(pearson[keys])
    pearson["spearman ρ"] = spearman["r"].reindex(index).to_numpy() if len(spearman) else np.nan
    pearson = pearson.sort_values(["backbone", "cfg_scale", "family", "r"],
                                  key=lambda s: s if s.name != "r" else -s.abs())
    columns = ["family", "backbone", "cfg_scale", "proxy", "direction", "n", "r", "CI95", "boot95", "p_val",
               "sign as predicted", "spearman ρ"]
    return ["Intervals: Fisher z (CI95) and a percentile bootstrap over tokenizers and seeds (boot95); "
            "`sign as predicted`: whether r has the sign the proxy's better direction predicts.", "",
            markdown_table(pearson[columns], floatfmt=".3g"), ""]


def perspectives_section(perspectives: pd.DataFrame | None, correlations: pd.DataFrame, target: str) -> list[str]:
    """The study's Fig. 4 as a table: per target, the perspectives of the reference group ranked by best |r|."""
    from .figures import reference_group

    lines = ["## Which perspective matters? (the study's Fig. 4)", ""]
    if perspectives is None or perspectives.empty:
        return lines + ["(no correlations: not enough tokenizers)", ""]
    targets = list(dict.fromkeys([target] + sorted(set(perspectives["target"]) - {target})))
    for goal in targets:
        group = reference_group(correlations, goal)
        if group is None:
            continue
        family, backbone, scale = group
        rows = perspectives[(perspectives["target"] == goal) & (perspectives["family"] == family)
                            & (perspectives["backbone"] == backbone) & np.isclose(perspectives["cfg_scale"], scale)
                            & (perspectives["method"] == "pearson")]
        table = []
        for perspective, members in rows.sort_values("rank").groupby("perspective", sort=False):
            best = members[members["best"]].iloc[0]
            others = ", ".join(f"{m} {r:.2f}" for m, r in zip(members.loc[~members["best"], "metric"],
                                                             members.loc[~members["best"], "r"]))
            table.append({"rank": int(best["rank"]), "perspective": perspective,
                          "study's": "yes" if best["paper"] else "", "main proxy": best["proxy"], "n": int(best["n"]),
                          "r": best["r"], "CI95": _interval(best["ci95_low"], best["ci95_high"]),
                          "boot95": _interval(best["boot_low"], best["boot_high"]),
                          "sign as predicted": _sign(best["sign_ok"]), "other metrics (r)": others})
        lines += [f"Target `{goal}`, {family}, {backbone}, cfg {scale:g} (Pearson; every group in "
                  "`results/tables/perspectives.parquet`):", "", markdown_table(pd.DataFrame(table), ".3g"), ""]
    return lines


def secondary_section(correlations: pd.DataFrame, target: str) -> list[str]:
    """The direction check and the strongest proxies for every target (the main one and IS, FDr6 where present)."""
    if correlations.empty or "target" not in correlations.columns:
        return []
    lines = ["## Every target: direction check and strongest proxies", "",
             "Per target and method: how many (group, proxy) correlations have the sign the proxy's direction "
             "predicts, and the three largest |r| of the first backbone at guidance 1 (all families).", ""]
    from .figures import reference_group

    table = []
    for (goal, method), rows in correlations.groupby(["target", "method"], sort=False):
        checked = rows["sign_ok"].dropna() if "sign_ok" in rows else pd.Series(dtype=bool)
        group = reference_group(correlations, goal)
        top = ""
        if group is not None:
            family, backbone, scale = group
            ref = rows[(rows["family"] == family) & (rows["backbone"] == backbone) & np.isclose(rows["cfg_scale"], scale)]
            ref = ref.reindex(ref["r"].abs().sort_values(ascending=False).index).head(3)
            top = ", ".join(f"{p} {r:.2f}" for p, r in zip(ref["proxy"], ref["r"]))
        table.append({"target": goal, "method": method, "correlations": len(rows),
                      "sign as predicted": f"{int(checked.sum())}/{len(checked)}", "strongest (reference group)": top})
    return lines + [markdown_table(pd.DataFrame(table)), ""]


def guidance_section(optima: pd.DataFrame | None, at_optimum: pd.DataFrame | None, target: str) -> list[str]:
    """Figs. 7 and 25: each tokenizer's best guidance scale and the correlations at that optimum."""
    if optima is None or optima.empty:
        return []
    rows = optima[optima["target"] == target]
    if rows.empty:
        return []
    low, high = rows["scale_low"].iloc[0], rows["scale_high"].iloc[0]
    lines = [f"## Guidance: each tokenizer's best scale in [{low:g}, {high:g}] (the study's Figs. 7, 25)", "",
             f"`best_scale`/`best_value`: the best {target} inside the range; `best_scale_all`: over every sampled "
             f"scale; the study finds every optimum inside [1.5, 2.0] ({int(rows['in_range'].sum())}/{len(rows)} "
             "here).", "",
             markdown_table(rows[["tokenizer", "backbone", "best_scale", "best_value", "best_scale_all",
                                  "best_value_all", "in_range", "n_scales_in_range"]], ".4g"), ""]
    if at_optimum is not None and len(at_optimum):
        best = at_optimum[(at_optimum["target"] == target) & (at_optimum["method"] == "pearson")].copy()
        best = best.reindex(best["r"].abs().sort_values(ascending=False).index)
        best["CI95"] = [_interval(a, b) for a, b in zip(best["ci95_low"], best["ci95_high"])]
        best["boot95"] = [_interval(a, b) for a, b in zip(best["boot_low"], best["boot_high"])]
        best["sign as predicted"] = [_sign(v) for v in best["sign_ok"]]
        lines += [f"Pearson r with {target} at each tokenizer's optimum in the range:", "",
                  markdown_table(best[["family", "backbone", "proxy", "n", "r", "CI95", "boot95", "p_val",
                                       "sign as predicted"]], ".3g"), ""]
    return lines


def pairs_section(pairs: pd.DataFrame | None, target: str) -> list[str]:
    """Fig. 8: the two-proxy fits of the perspectives' main proxies, best first."""
    if pairs is None or pairs.empty:
        return []
    rows = pairs[pairs["target"] == target].sort_values("r2", ascending=False)
    rows = rows.groupby(["family", "backbone", "cfg_scale"], sort=True).head(5)
    return [f"## Pairs of perspectives (the study's Fig. 8): {target} ≈ a + b·m1 + c·m2", "",
            "Per group the five best pairs of main proxies; `r2_1`, `r2_2`: each proxy alone; `r_12`: the "
            "correlation between the two proxies.", "",
            markdown_table(rows[["family", "backbone", "cfg_scale", "perspective_1", "proxy_1", "perspective_2",
                                 "proxy_2", "n", "r2", "adj_r2", "r2_1", "r2_2", "r_12"]], ".3g"), ""]


def seeds_section(seeds: pd.DataFrame | None, target: str) -> list[str]:
    """Seed noise against the spread between tokenizers (docs/analysis.md §6)."""
    lines = ["## Seed noise", ""]
    if seeds is None or seeds.empty:
        return []
    rows = seeds[seeds["target"] == target]
    if rows.empty or rows["n_seeds_max"].max() < 2:
        return lines + ["One seed per (tokenizer, backbone): the generation table has no seed repeats, so the "
                        "seed noise is unmeasured and every interval treats the target as exact per tokenizer.", ""]
    return lines + ["`seed_sd`: pooled within-tokenizer SD; `between_sd`: SD of the tokenizers' seed means; "
                    "`ratio` = between_sd / seed_sd.", "",
                    markdown_table(rows.drop(columns=["target"]), ".3g"), ""]


def figures_section() -> list[str]:
    """What every figure in results/figures shows (the captions of analysis/figures.py)."""
    from .figures import CAPTIONS

    lines = ["## Figures (results/figures)", ""]
    for prefix, text in CAPTIONS.items():
        lines.append(f"- `{prefix}*.png`: {text}")
    return lines + [""]
