from ctxaware.imports import import_package_model
from ctxaware.smk import job

with job(snakemake):
    settings = snakemake.params.settings
    import_package_model(settings["source"], snakemake.output.model, settings["system_message"], settings["dtype"])
