"""Release Guard: publish medical imaging datasets without exposing their patients.

``guards`` is a plain library that knows nothing of Airflow; the DAG in ``dags/`` and the CLI in
``guards.cli`` call the same steps (see ``guards.pipeline``).
"""

__version__ = "0.1.0"
