"""The search for the best model that passes every gate (issue 25, in progress): its space (:mod:`.space`), one trial
(:mod:`.trial`: the pipeline's own stages in a directory of its own, judged by the gates) and the loop (:mod:`.study`:
Optuna with the gates as constraints, a journal in the search directory to resume from, the Pareto front)."""
