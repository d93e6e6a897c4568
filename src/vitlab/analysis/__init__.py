"""Floor 5, looking at results: attention maps and Grad-CAM (:mod:`~vitlab.analysis.explain`), figures
(:mod:`~vitlab.analysis.plots`), the results report (:mod:`~vitlab.analysis.report`) and the robustness tests
(:mod:`~vitlab.analysis.robustness`)."""
