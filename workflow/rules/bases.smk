# One train and one predict rule per model family, each in its family's conda env.
for _family in families():

    rule:
        name:
            f"train_{_family}"
        input:
            store="results/{dataset}/reference.zarr",
            split="results/{dataset}/split.json",
        output:
            directory("results/{dataset}/bases/{model}/{fit}/model"),
        wildcard_constraints:
            model="|".join(models_of_family(_family)),
            fit=r"full|cv\d+",
        params:
            spec=base_json,
        log:
            "logs/{dataset}/train_{model}_{fit}.log",
        benchmark:
            "results/{dataset}/benchmarks/train_{model}_{fit}.tsv"
        conda:
            env_file(_family)
        threads: 2
        resources:
            mem_mb=8000,
            runtime=240,
        shell:
            "python -m elmlff train --spec {params.spec:q} --store {input.store} --split {input.split}"
            " --fit {wildcards.fit} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"

    rule:
        name:
            f"predict_{_family}"
        input:
            base="results/{dataset}/bases/{model}/{fit}/model",
            store="results/{dataset}/reference.zarr",
            split="results/{dataset}/split.json",
        output:
            "results/{dataset}/bases/{model}/{fit}/predictions.npz",
        wildcard_constraints:
            model="|".join(models_of_family(_family)),
            fit=r"full|cv\d+",
        params:
            device=config["device"],
            batch=config["evaluation"]["predict_batch_size"],
            hvp=f"--hvp-seed {config['evaluation']['seed']}" if config["evaluation"]["hvp"] else "",
        log:
            "logs/{dataset}/predict_{model}_{fit}.log",
        benchmark:
            "results/{dataset}/benchmarks/predict_{model}_{fit}.tsv"
        conda:
            env_file(_family)
        threads: 2
        resources:
            mem_mb=8000,
            runtime=60,
        shell:
            "python -m elmlff predict --base {input.base} --store {input.store} --split {input.split}"
            " --fit {wildcards.fit} --device {params.device} --batch-size {params.batch} {params.hvp}"
            " --out {output} > {log} 2>&1"
