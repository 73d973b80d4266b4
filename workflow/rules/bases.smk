# One train and one predict rule per model family; its record (elmlff.bases.FAMILIES) gives
# the conda env and the cluster resources (memory and runtime grow with each attempt).
from elmlff.bases import FAMILIES


def family_env(family):
    """The family's conda env file, relative to this rule file."""
    return f"../../{FAMILIES[family].env_file}"


for _family in families():

    rule:
        name:
            f"train_{_family}"
        input:
            store=L.reference,
            split=L.split,
        output:
            directory(L.base_model("{model}", "{fit}")),
        wildcard_constraints:
            model="|".join(models_of_family(_family)),
            fit=r"full|cv\d+",
        params:
            spec=base_json,
        log:
            L.log("train_{model}_{fit}"),
        benchmark:
            L.benchmark("train_{model}_{fit}")
        conda:
            family_env(_family)
        threads: 1
        priority: train_priority  # the longest trainings first
        resources:
            **FAMILIES[_family].train_resources.rule(),
        shell:
            "python -m elmlff train --spec {params.spec:q} --store {input.store} --split {input.split}"
            " --fit {wildcards.fit} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"

    rule:
        name:
            f"predict_{_family}"
        input:
            base=L.base_model("{model}", "{fit}"),
            store=L.reference,
            split=L.split,
        output:
            L.base_predictions("{model}", "{fit}"),
        wildcard_constraints:
            model="|".join(models_of_family(_family)),
            fit=r"full|cv\d+",
        params:
            device=config["device"],
            batch=config["evaluation"]["predict_batch_size"],
            hvp=f"--hvp-seed {config['evaluation']['seed']}" if config["evaluation"]["hvp"] else "",
        log:
            L.log("predict_{model}_{fit}"),
        benchmark:
            L.benchmark("predict_{model}_{fit}")
        conda:
            family_env(_family)
        threads: 1
        resources:
            **FAMILIES[_family].predict_resources.rule(),
        group:
            "predict"  # many small jobs: one SLURM job (profiles/slurm: group-components)
        shell:
            "python -m elmlff predict --base {input.base} --store {input.store} --split {input.split}"
            " --fit {wildcards.fit} --device {params.device} --batch-size {params.batch} {params.hvp}"
            " --out {output} > {log} 2>&1"
