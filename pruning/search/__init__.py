"""The search for the best model that passes every gate (issue 25): its space (:mod:`.space`)."""
