from ctxaware.smk import job
from ctxaware.validity import write_score_validity

with job(snakemake):
    p = snakemake.params
    table = write_score_validity(
        dict(zip(p.datasets, snakemake.input.data, strict=True)),
        p.scores,
        snakemake.output.csv,
        snakemake.output.png,
        layer_study=snakemake.input.layer_study[0],
        layer_dataset=p.layer_dataset,
    )
    print(table.to_string(index=False))
