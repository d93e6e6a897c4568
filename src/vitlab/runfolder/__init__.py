"""Floor 4, run folders: what a run leaves behind (:class:`Run`, with the typed schema of its JSON files in
:mod:`~vitlab.runfolder.schema`) and :func:`load_model`, the one way to get a model from a run folder or a
pretrained spec."""

from __future__ import annotations

from .run import Run, RunError, load_model
from .schema import RunConfig, RunMetrics

__all__ = ["Run", "RunError", "RunConfig", "RunMetrics", "load_model"]
