"""The kopf operator: thin handlers over the pure planner in ``mailish.domain``.

Lives inside the ``mailish`` package because a top-level ``operator`` package would shadow
Python's standard-library ``operator`` module.
"""
