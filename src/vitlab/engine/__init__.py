"""Floor 6, training: the recipe, the classification engine (:mod:`~vitlab.engine.train`), the shared epoch loop
and time-budget planner, the one run driver (:mod:`~vitlab.engine.driver`) and the tasks it drives
(:mod:`~vitlab.engine.classify`, :mod:`~vitlab.engine.dense`, :mod:`~vitlab.engine.dino`)."""
