"""Accuracy-analysis reports: a run's results as a self-contained HTML page, Markdown and JSON.

:func:`write_report` lays out whichever sections a run produced — headline numbers, training
curves, CESTAC digits per layer, oversmoothing per precision, the tuned policy against uniform
ones, block-sparse attention speed against density, mixed-precision linear algebra (iterative
refinement, PageRank, unite and conquer), the configuration and the versions — with
matplotlib figures (Agg canvas, no pyplot) embedded in the HTML and saved as PNG files for the
Markdown.
"""

from dp2ejax.report.figures import Image
from dp2ejax.report.sections import SECTIONS, Section, attention_cases, build_sections
from dp2ejax.report.serialize import to_jsonable
from dp2ejax.report.write import atomic_write, collect_versions, write_report

__all__ = [
    "SECTIONS",
    "Image",
    "Section",
    "atomic_write",
    "attention_cases",
    "build_sections",
    "collect_versions",
    "to_jsonable",
    "write_report",
]
