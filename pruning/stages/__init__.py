"""The stages: one function per stage, each taking the validated Config and returning a typed result.

These are the only code that reads and writes stage files; everything they call is a pure library function.
Each is imported lazily by the CLI so ``python -m pruning --help`` stays fast.
"""
