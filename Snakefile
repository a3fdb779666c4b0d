# diffusability — which properties of a tokenizer's latent space make diffusion generate well?
#
#   snakemake --cores all                      # the embedded default (config/config.yaml)
#   snakemake --cores all --profile cluster    # the same DAG on SLURM (cluster/config.yaml)
#   snakemake --cores all --configfile config/paper.yaml --profile cluster   # the full study
#
# The rules are thin (one `diffusability <command>` each); the logic lives in the package under
# workflow/diffusability. One stage = one rule file = one package (docs/architecture.md §2), included
# in stage order: data → teacher → tokenizers → reconstruction, latents → latent metrics, diffusion →
# sampling → evaluation, representation → analysis (tables, correlations, figures, report).

from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a study is given with --configfile (which then replaces it
# rather than being merged into it: a study must not inherit the demo's tokenizers).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/tokenizers.smk"
include: "workflow/rules/reconstruction.smk"
include: "workflow/rules/latents.smk"
include: "workflow/rules/latent_metrics.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/representation.smk"
include: "workflow/rules/analysis.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        final_outputs(),
