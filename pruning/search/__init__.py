"""The search for the best model that passes every gate (issue 25, in progress): its space (:mod:`.space`) and one
trial (:mod:`.trial`: the pipeline's own stages in a directory of its own, judged by the gates)."""
