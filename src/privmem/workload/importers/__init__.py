"""Importers: real recordings of a guest's conversions as privmem traces.

One module per source registers its line parser with ``@importer`` (``IMPORTERS``):
``qemu-log`` (:mod:`.qemu_log`), ``trace-cmd`` (:mod:`.trace_cmd`), ``perf-script``
(:mod:`.perf_script`); the host kernel's tracepoints both tools print are read by
:mod:`.kvm_events`.  What every importer shares is the pipeline (:mod:`.pipeline`): dedup,
threads to vCPUs, layout inference, the spool and the report.  Pure logic.
"""

from . import qemu_log, trace_cmd, perf_script  # noqa: F401,I001  (each registers its importer; this order is --from's)
from .events import Conversion, Dropped, Malformed, Skipped, Thread
from .pipeline import Import, find_importer, import_file, import_qemu_log, import_trace
from .registry import IMPORTERS, Importer, importer
from .report import ImportReport

__all__ = ["Conversion", "Dropped", "IMPORTERS", "Import", "ImportReport", "Importer", "Malformed", "Skipped",
           "Thread", "find_importer", "import_file", "import_qemu_log", "import_trace", "importer"]
