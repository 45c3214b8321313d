"""Workloads: the op model and trace format shared by both backends, the generators, the
importers of real recordings and trace statistics.  Pure logic (no ctypes, fcntl or mmap)."""

from .generators import (DEFAULT_WORKLOAD, GENERATORS, MAX_SCALE, WORKLOADS, Workload, generate,
                         swiotlb_size, workload)
from .model import ModelResult, check_trace, summary
from ..ops import KINDS, VIEWS, Op, Trace
from .importers import IMPORTERS, ImportReport, import_file, import_qemu_log, import_trace
from .stats import TraceStats, trace_stats
from .trace import FORMAT_VERSION, TraceReader, dumps_trace, loads_trace, read_trace, write_trace

__all__ = [
    "DEFAULT_WORKLOAD", "FORMAT_VERSION", "GENERATORS", "IMPORTERS", "ImportReport", "KINDS", "MAX_SCALE",
    "ModelResult", "Op", "Trace", "TraceReader", "TraceStats", "VIEWS", "WORKLOADS", "Workload",
    "check_trace", "dumps_trace", "generate", "import_file", "import_qemu_log", "import_trace", "loads_trace",
    "read_trace", "summary", "swiotlb_size", "trace_stats", "workload", "write_trace",
]
