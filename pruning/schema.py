"""The base of every typed configuration section (params.yaml's root, the stages', the methods', the gates').

Frozen and ``extra="forbid"``: an unknown key is an error naming the key, and nothing downstream can change a value
that was validated at the edge. It lives apart from :mod:`pruning.config` so that method plug-ins and the gates can
declare their sections without importing the root configuration (which imports them).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen section of params.yaml; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
