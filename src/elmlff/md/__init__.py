"""Molecular dynamics with any ASE calculator (bases, baselines, meta-models) and the observables
of the "Forces are not Enough" benchmark: stability, h(r), RDF, diffusivity, speed, NVE drift.

* :mod:`elmlff.md.observables` - tested functions of trajectories (no MD needed);
* :mod:`elmlff.md.run` - ASE integrators with incremental trajectories and early stops;
* :mod:`elmlff.md.temperature` - the temperature the data's frames were sampled at
  (configurational temperature through a trained base's Hessian trace);
* :mod:`elmlff.md.campaign` - MD as a workflow stage: replicas, summary and table.
"""
