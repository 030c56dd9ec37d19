from ctxaware.figures import nih_heatmap
from ctxaware.smk import job

with job(snakemake):
    w = snakemake.wildcards
    nih_heatmap(snakemake.input.generations[0], snakemake.output.png, f"{w.model} / {w.dataset} / {w.method}")
