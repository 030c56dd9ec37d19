# Config is read and validated here, once; the experiment plan (ctxaware.plan) answers every config question.
# The rule files use these names and one-line input functions (docs/architecture.md).
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

# the plan, the method grammar and code digests come from the package (no ML libraries are imported here);
# the checkout's src/ comes first, so this works where only the jobs have the package installed (--sdm conda)
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from ctxaware.methods import REFERENCE
from ctxaware.plan import (
    CHECKPOINTS,
    DATA,
    DATA_STATS,
    DIAGNOSIS_CSV,
    EVAL_ANSWERS,
    EVAL_GENERATIONS,
    EVAL_RESULT,
    GENERATION_CACHE,
    IMPORTED_MODEL,
    LAYER_SCORES,
    MODEL,
    NIH_HEATMAP,
    NO_DATASET,
    ORGANISM_BASE,
    ORGANISM_DIR,
    REAL_LANGUAGE_SET,
    SCORE_SHARD,
    SCORES,
    SFT,
    SFT_STATS,
    TAGGED_BRANCH,
    TAGGED_WINDOW_BRANCH,
    Plan,
    fill,
    local_inputs,
    settings_files,
)
from ctxaware.organism import EVAL_FILES as ORGANISM_EVAL_FILES
from ctxaware.organism import SFT_FILES as ORGANISM_SFT_FILES
from ctxaware.provenance import check_output_cache, code_digest
from ctxaware.judge import JUDGED_TASKS
from ctxaware.tasks import TASKS as ALL_TASKS

validate(config, workflow.source_path("../schemas/config.schema.yaml"))
# --cache (profiles/slurm turns it on) without a cache directory: Snakemake would warn, then fail on the first
# cached rule with "Cache backend unavailable"; say what to set instead
check_output_cache(workflow.workflow_settings.cache, os.environ)
# the cross-references and the method grammar are checked here; each error names its config key
PLAN = Plan(config)
# each correction of the quirk ablation (config ablation) merged into the configuration, checked as the configuration
for correction, corrected in PLAN.ablation_configs().items():
    try:
        validate(corrected, workflow.source_path("../schemas/config.schema.yaml"))
    except WorkflowError as error:
        raise WorkflowError(f"config key ablation.{correction}: {error}") from None
# what a job would find wrong once it runs (layers, NIH windows, haystack, MT-Bench files), checked before any job
# starts: an error here deletes nothing (README: Start-up checks)
PLAN.check_startup()
# the judge's key: a warning on every start (a dry run plans anywhere), an error once a judge job is due (onstart)
JUDGE_KEY_MISSING = PLAN.judge_key_missing(os.environ)
if JUDGE_KEY_MISSING:
    logger.warning(
        f"{JUDGE_KEY_MISSING} (a run that judges MT-Bench stops at its start)"
    )


onstart:
    # after the DAG is built, before any job starts (never in a dry run): only runs with a `judge` job due need
    # the key (evaluate only writes MT-Bench's answers)
    if JUDGE_KEY_MISSING and any(
        job.rule.name == "judge" for job in workflow.dag.needrun_jobs()
    ):
        raise WorkflowError(JUDGE_KEY_MISSING)


DATASETS = PLAN.datasets
MODELS = PLAN.models
REFERENCES = PLAN.references
PAIRS = PLAN.pairs
TASKS = PLAN.tasks
GENERATED_TASKS = PLAN.generated_tasks()  # scored by `evaluate`
JUDGED = PLAN.judged_tasks()  # answered by `evaluate`, scored by `judge`
SCORER = PLAN.scorer
LAYER_STUDY = PLAN.layer_study
DIAGNOSIS = config["diagnosis"]
ENV = "../../envs/ctxaware.yaml"


scattergather:
    score=config["scoring"]["shards"],


def _choice(names):
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    dataset=_choice(DATASETS),
    model=_choice(MODELS),
    method=PLAN.method_pattern(),
    tagging=PLAN.tagging_pattern(),
    task=_choice(ALL_TASKS),
    scorer=_choice(PLAN.scorers()),
    window=_choice(map(str, PLAN.own_windows())),
    pair=_choice(PAIRS),
    name=_choice(PLAN.imports()),


# One-line input and params functions: the wildcards handed to the plan.
def res(stage, key):
    return config["resources"][stage][key]


def stage_resources(stage):
    return PLAN.stage_resources(stage)


def dataset_source_input(wildcards):
    return PLAN.dataset_inputs(wildcards.dataset)


def base_input(wildcards):
    return PLAN.base_inputs(wildcards.model)


def seed_input(wildcards):
    return PLAN.scorer_inputs()


def score_settings(wildcards):
    return PLAN.score_settings(wildcards.scorer)


def scorer_max_length(wildcards):
    return PLAN.scorer_max_length(wildcards.scorer)


def score_code(wildcards):
    return code_digest(PLAN.score_module(wildcards.scorer))


def tagging_scores(wildcards):
    return PLAN.tagging_scores(wildcards.dataset, wildcards.tagging)


def tagging_settings(wildcards):
    return PLAN.tagging_settings(wildcards.tagging)


def tagging_scores_at_window(wildcards):
    return PLAN.tagging_scores(
        wildcards.dataset, wildcards.tagging, int(wildcards.window)
    )


def haystack_input():
    return PLAN.haystack_inputs()


def sft_input(wildcards):
    return PLAN.sft_path(wildcards.dataset, wildcards.method, wildcards.model)


def finetune_priority(wildcards):
    return PLAN.fine_tune_priority(wildcards.model, wildcards.dataset, wildcards.method)


def recipe_for(wildcards):
    return PLAN.recipe(wildcards.model, wildcards.dataset, wildcards.method)


def fine_tuned_input(wildcards):
    return PLAN.model_path(wildcards.model, wildcards.dataset, wildcards.method)


def with_indicator(wildcards):
    return PLAN.with_indicator(wildcards.method)


def evaluation_settings(wildcards):
    return PLAN.evaluation_settings(
        wildcards.model, wildcards.dataset, wildcards.method
    )


def evaluation_files(wildcards):
    return PLAN.evaluation_files(wildcards.model, wildcards.dataset, wildcards.method)


def corrected_model(wildcards):
    return PLAN.corrected_model(wildcards.model, wildcards.dataset, wildcards.method)


def corrected_model_input(wildcards):
    return local_inputs([corrected_model(wildcards)])


def corrected_settings(wildcards):
    return PLAN.corrected_settings(
        wildcards.model, wildcards.dataset, wildcards.method, wildcards.task
    )


def corrected_files(wildcards):
    return settings_files(corrected_settings(wildcards))


def judge_files():
    return PLAN.judge_files()


def reference_input(wildcards):
    return PLAN.reference_inputs(wildcards.model)


def reference_source(wildcards):
    return PLAN.reference_source(wildcards.model)


def reference_settings(wildcards):
    return PLAN.reference_evaluation_settings(wildcards.model, wildcards.method)


def reference_files(wildcards):
    return PLAN.reference_evaluation_files(wildcards.model, wildcards.method)


def pair_inputs(roles):
    return lambda wildcards: local_inputs(PLAN.pair_models(wildcards.pair, roles))


def pair_model(pair, role):
    return PLAN.pair_model(pair, role)


def pair_variants(wildcards):
    return PLAN.diagnosis_variants(wildcards.pair)


def import_settings(wildcards):
    return PLAN.import_settings(wildcards.name)


def real_language_input(wildcards):
    return PLAN.real_language_inputs()


def diagnosis_nih(wildcards):
    return PLAN.diagnosis_nih(wildcards.pair)


def allocation_nih(wildcards):
    return PLAN.allocation_nih(wildcards.pair)


def steering_tasks(wildcards):
    return PLAN.steering_tasks(wildcards.pair)


def steering_files(wildcards):
    return PLAN.steering_files(wildcards.pair)


def table4_targets():
    """Table 4 and its threshold ablation when the run evaluates any model (config/real.yaml fine-tunes none)."""
    if not PLAN.table4_rows():
        return []
    ablation = [rules.quirk_ablation.output] if config["ablation"] else []
    return [rules.table4.output, rules.threshold_ablation.output, *ablation]


def diagnosis_targets():
    """Section 2's tables and figures when pairs are configured (the rules are defined in diagnosis.smk)."""
    if not PAIRS:
        return []
    return [
        rules.nih_template_table.output,
        rules.attention_allocation_table.output,
        rules.attention_steering_table.output,
    ]
