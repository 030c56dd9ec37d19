from ctxaware.smk import job
from ctxaware.training import finetune

with job(snakemake):
    p = snakemake.params
    finetune(
        p.base,
        snakemake.input.sft,
        snakemake.output.model,
        p.checkpoint_dir,
        p.recipe,
        with_indicator=p.with_indicator,
        seed=p.seed,
    )
