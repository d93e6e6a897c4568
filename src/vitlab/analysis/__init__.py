"""Floor 5, looking at results: attention maps and Grad-CAM (:mod:`~vitlab.analysis.explain`), figures
(:mod:`~vitlab.analysis.plots`) and the results report (:mod:`~vitlab.analysis.report`)."""
