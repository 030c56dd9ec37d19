from ctxaware.layers import write_layer_agreement
from ctxaware.smk import job

with job(snakemake):
    write_layer_agreement(
        snakemake.input.scores[0],
        snakemake.params.top_fraction,
        snakemake.output.csv,
        snakemake.output.png,
    )
