# A tiny workflow for the SLURM tier: `flaky` fails on its first attempt (on purpose) and
# succeeds on the retry, with memory growing per attempt; `broken` always fails.


rule flaky:
    output:
        "flaky.txt",
    log:
        "logs/flaky.log",
    resources:
        mem_mb=lambda wildcards, attempt: 500 * attempt,
    shell:
        "if [ {resources.mem_mb} -lt 1000 ]; then echo 'attempt 1 fails on purpose' > {log};"
        " exit 3; fi; echo 'attempt 2 ok' > {log}; echo {resources.mem_mb} > {output}"


rule broken:
    output:
        "broken.txt",
    log:
        "logs/broken.log",
    shell:
        "echo 'this rule always fails' > {log}; exit 4"
