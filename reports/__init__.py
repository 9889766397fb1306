"""Reports of awdsearch searches, read from MLflow: ``python -m reports --experiment NAME``.

Modules: `load` (MLflow -> pandas), `tables`, `trials` (each search's winners with their searched
params, and every trial ranked), `ablation`, `importance` (Optuna), `plots` (matplotlib PNGs),
`render` (Markdown + self-contained HTML), `build` (all of it, and logging the report on each
search's parent run), `references` (published numbers, ``references.json``, and when a run can
be compared with them).
"""

from reports.errors import ReportError

__all__ = ["ReportError"]
