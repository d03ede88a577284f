"""The one exception tree of the pipeline.

Every error a user can cause derives from :class:`PruningError`; the CLI maps it to a one-line message and
exit code 2. Messages name the value, the allowed range and the fix (httpx style).

    PruningError
    ├── ConfigError        params.yaml: unknown key, wrong type, value out of range
    ├── DataError          a missing or malformed data file
    ├── ModelError         an unknown architecture, an unimportable ``module:callable``, a bad model file
    ├── GraphTraceError    torch-pruning cannot trace the model, or a ratio would empty a layer
    ├── ParityError        ONNX output differs from torch beyond the tolerance
    ├── QuantizationError  ONNX Runtime could not quantize the model
    └── GateFailed         an acceptance gate failed and ``--strict`` was asked for

Library code (methods, criteria, allocation, runtime, ...) never names a params.yaml key: it raises in its own words
and, when one of its own arguments is the cause, says which in ``field`` (the argument's name, e.g. ``round_to``).
The stage that called it knows the section and turns that into the key (:func:`params_errors`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class PruningError(Exception):
    """Base class of every error the user can act on.

    ``field``: the library argument that caused it (a method config field such as ``ratio``), or None.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConfigError(PruningError):
    """params.yaml (or a CLI override) is invalid."""


class DataError(PruningError):
    """A data file is missing or malformed."""


class ModelError(PruningError):
    """A model cannot be built or loaded."""


class GraphTraceError(PruningError):
    """torch-pruning cannot trace or prune the model as asked."""


class ParityError(PruningError):
    """The exported ONNX model does not match torch within tolerance."""


class QuantizationError(PruningError):
    """ONNX Runtime quantization failed."""


class GateFailed(PruningError):
    """At least one acceptance gate failed (raised only in strict mode)."""


@contextlib.contextmanager
def params_errors(section: str) -> Iterator[None]:
    """A library error that names its argument (``field``) becomes a ConfigError naming ``section.field``."""
    try:
        yield
    except PruningError as exc:
        if exc.field is None:
            raise
        raise ConfigError(f'Invalid "{section}.{exc.field}": {exc}') from None
