"""The world: a procedural universe of DreamBench-like objects in DreamBench-like contexts (issue 7).

``vocab`` (classes, colours, patterns, contexts, the caption template), ``design`` (an object as a
function of its id), ``objects`` / ``contexts`` / ``render`` (vector drawing at any size),
``sampling`` (the pretraining stream and held-out subject photo sets). numpy + PIL only.
"""
