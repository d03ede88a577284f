"""How many units each group loses: a uniform ratio (with a bisection to a MACs target), torch-pruning's global
ranking (chosen by the channel method's ``scope``), or measured latency (``latency.py`` with its table)."""
