# ctxaware: context-dependency indicators for instruction fine-tuning (Wang et al., 2024), end to end.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless --configfile names another (which then replaces it instead of merging into it).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/organism.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/tag.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/diagnosis.smk"


# Trivial jobs run in the Snakemake process itself, never as cluster jobs.
localrules:
    all,
    vanilla_sft,


rule all:
    default_target: True
    input:
        table4_targets(),
        rules.table3.output,
        PLAN.nih_heatmaps(),
        rules.layer_agreement.output,
        rules.instruction_lengths.output,
        rules.score_validity.output,
        diagnosis_targets(),
