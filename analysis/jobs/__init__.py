"""Jobs: each CLI command's work as one function, typed config in, typed summary out.

    harvest.py  harvest(HarvestJob, db)  -> HarvestSummary   records and statistics of every unit of some layers
    explain.py  explain(ExplainJob, db)  -> ExplainSummary   explanations from the top train records
    score.py    score(ScoreJob, db)      -> ScoreSummary     simulate explanations on held-out records, score them
    n2g.py      n2g(N2GJob, db)          -> N2GSummary       Neuron2Graph graphs, scored
    topics.py   topics(TopicsJob, db)    -> TopicsSummary    word-pool topics in every projection mode
    export.py   export(ExportJob, db)    -> dict             a unit's record as OpenAI-style JSON
    attribute.py attribute_prompt(AttributeJob, db) -> PromptReport   start from a prompt (the Prompt page's too)

A job is the composition layer: it reads what it needs from the store in short visits, calls the science
(``analysis.*``), and writes its results through the store's repositories in short transactions, so the viewer
keeps reading meanwhile; every job skips work already stored (resumable). The CLI (``analysis/__main__.py``, its
commands in ``analysis/cli.py``) is a thin layer over these functions; the viewer's "compute now" buttons call the
same functions in-process, passing their own ``Progress`` (a job loads its own copy of a model: it attaches hooks
that must not fire in another session's forward pass through the viewer's shared copy).

Shared by the jobs: ``specs`` (layer and unit specs), ``reads`` (store reads), ``fanout`` (threads for API calls),
``writes`` (batched writes), ``options`` (the CLI's options from the configs); ``build/`` runs them all.
"""
