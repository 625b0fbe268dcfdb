"""Job: build a model's lenses in one resumable command.

A plan comes first: per stage its layers, units, estimated time (seconds per unit measured by earlier builds on
this machine, ``<db>.costs.json``; else the project VM's numbers from bench/RESULTS.md, and said so) and disk.
``budget`` keeps the cheap lenses for every layer and gives the expensive ones as many layers as fit, spread
over the depth. Then each stage runs layer by layer in dependency order through its own job, which skips work
already done (so a killed build resumes), and the seconds per unit it took are recorded for the next plan.

Modules: ``plan`` (the job's config, the stages, their costs and the plan), ``status`` (what a running build
writes beside the database for the viewer's Cache page), ``run`` (``build``: the loop over a table of stages).
"""
