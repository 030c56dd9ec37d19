from ctxaware.evaluation import evaluate_all
from ctxaware.smk import job

with job(snakemake):
    evaluate_all(
        # a fine-tune's directory; an evaluate-only row names its model (a hub id is no input)
        snakemake.params.get("model", snakemake.input.model),
        snakemake.params.settings,
        snakemake.params.with_indicator,
        dict(zip(snakemake.params.generated, snakemake.output.results, strict=True)),
        dict(zip(snakemake.params.generated, snakemake.output.generations, strict=True)),
        cache_dir=snakemake.params.cache_dir,
        engine=snakemake.params.engine,
        # rule evaluate_correction judges nothing: no answers
        out_answers=dict(zip(snakemake.params.judged, snakemake.output.get("answers", []), strict=True)),
    )
