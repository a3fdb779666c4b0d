"""The workflow module: what the Snakemake rules know and the stages do not.

``layout`` is where every artifact of a study lives (the rules build their paths with it and the
aggregation command parses them back); ``config`` validates a study's config against the schema and
builds each job's spec from it. Only the rule files, ``config`` itself and the commands (the top
floor) import this package; no stage module does, so the stages never depend on where the workflow
puts their files.
"""
