# elmlff: ensemble learning of machine-learning force fields.
# Stages, one file each (input functions in workflow/rules/common.smk):
#   data      read + convert units + split        -> results/{dataset}/reference.zarr, split.json
#   bases     train and predict each base          -> results/{dataset}/bases/{model}/{fit}/
#   store     merge every base's predictions       -> results/{dataset}/predictions.zarr
#   metas     meta-models over a subset of bases   -> results/{dataset}/metas/{meta}/{subset}/
#   subsets   the k-subset study (one job per k)   -> results/{dataset}/subsets/, subsets.csv
#   evaluate  baselines (bases only) + metrics     -> results/{dataset}/baselines.json, metrics.csv
#   figures   Fig. 2a-style chart + Markdown table -> results/{dataset}/figures/, metrics_table.md
#   md        MD of chosen models + Table 1        -> results/{dataset}/md/, md_summary.csv
#   materials Table 2 + equations of state         -> results/{dataset}/table2.md, eos.csv
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/bases.smk"
include: "workflow/rules/store.smk"
include: "workflow/rules/metas.smk"
include: "workflow/rules/subsets.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/md.smk"
include: "workflow/rules/materials.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
