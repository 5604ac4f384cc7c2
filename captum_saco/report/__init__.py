"""One self-contained HTML page per evaluation: settings, results with their
uncertainty, cost, pairwise comparisons, distributions, deletion curves and
example explanations (see :func:`write_report`). The page's template lives in
``templates/``, apart from the code that fills it."""

from captum_saco.report.examples import Examples, explain_examples
from captum_saco.report.render import render_report, write_report

__all__ = ["Examples", "explain_examples", "render_report", "write_report"]
