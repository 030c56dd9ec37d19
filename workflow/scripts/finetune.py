from ctxaware.smk import job
from ctxaware.training import data_parallel_processes, launch_finetune

with job(snakemake):
    p = snakemake.params
    launch_finetune(
        # several GPUs: data-parallel under torchrun; otherwise in this process
        processes=data_parallel_processes(snakemake.resources.get("gpu", 0)),
        base=p.base,
        train_parquet=snakemake.input.sft,
        out_dir=snakemake.output.model,
        checkpoint_dir=p.checkpoint_dir,
        recipe=p.recipe,
        with_indicator=p.with_indicator,
        seed=p.seed,
    )
