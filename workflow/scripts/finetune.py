from ctxaware.smk import job
from ctxaware.training import finetune

with job(snakemake):  # noqa: F821
    p = snakemake.params  # noqa: F821
    finetune(
        p.base,
        snakemake.input.sft,  # noqa: F821
        snakemake.output.model,  # noqa: F821
        p.checkpoint_dir,
        p.recipe,
        with_indicator=p.with_indicator,
        seed=p.seed,
    )
