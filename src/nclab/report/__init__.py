"""The CE-vs-label-smoothing report: figures, ``summary.md`` and a self-contained
``report.html`` built from run directories of :func:`nclab.train.train`.

Use :func:`build_report`; the numbers come back as data in :class:`ReportResult.summary`.
Definitions (matched NC1, verdict rules, bands) are in the submodules and docs/report.md.
"""

from nclab.report.analysis import SeedStat, matched_nc2
from nclab.report.builder import ReportResult, build_report
from nclab.report.runs import GroupKey, RunData, discover_run_dirs, load_runs
from nclab.report.summary import ReportSummary, summarize
from nclab.report.verdicts import FAILS, HOLDS, PARTLY, UNDETERMINED, ClaimVerdict

__all__ = [
    "FAILS",
    "HOLDS",
    "PARTLY",
    "UNDETERMINED",
    "ClaimVerdict",
    "GroupKey",
    "ReportResult",
    "ReportSummary",
    "RunData",
    "SeedStat",
    "build_report",
    "discover_run_dirs",
    "load_runs",
    "matched_nc2",
    "summarize",
]
