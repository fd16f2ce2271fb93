"""``multi_model_reloading`` in the worker: where model versions are (``sources``, ``versions``),
which are in memory (``cache``, ``store``), what the handler calls (``client``), and what makes
them change (``watch``). ``runtime`` wires them into a runner."""
