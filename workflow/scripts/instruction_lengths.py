from ctxaware.figures import instruction_lengths
from ctxaware.smk import job

with job(snakemake):
    summary = instruction_lengths(
        dict(zip(snakemake.params.datasets, snakemake.input.scores, strict=True)),
        snakemake.params.beta,
        snakemake.output.png,
    )
    print(summary.to_string(index=False))
