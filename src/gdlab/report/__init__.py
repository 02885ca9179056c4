"""Reports of studies: matplotlib figures and self-contained HTML and Markdown pages."""

from gdlab.report.figures import Figure, study_figures
from gdlab.report.html import build_report

__all__ = ["Figure", "build_report", "study_figures"]
