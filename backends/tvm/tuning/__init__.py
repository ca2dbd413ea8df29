"""Autotuning with MetaSchedule, and the tuning database it fills.

    db = TuningDatabase("x86_64")                       # ~/.cache/sliver/tuning/tvm-<ver>/<target key>/
    tune(module, "x86_64", Budget(trials=200))           # or Budget(seconds=600), rpc=RPC("host:9190", "pi")
    compile_module(module, "x86_64", tuning=db)          # tuned records replace default schedules

What is tuned: the very PrimFuncs sliver's default pipeline compiles (the output of
:func:`sliver.backends.tvm.schedules.front_passes`: channels-last convolutions with
their fused epilogues), one task per distinct function.  Before any search, each
task's *default schedule* is measured once and stored as a record of its own, so a
tuned record replaces the default only where it measured faster, and a function
without records keeps its default schedule (never TVM's naive loops).

The parts:

- :mod:`.budget`: :class:`Budget` (``--trials N`` search trials over the model's
  tasks, split in proportion to each task's FLOPs times its number of calls, handed
  out in rounds so every task gets some before any gets many; or ``--time-budget
  10m``, the same rounds until the time is up) and :class:`TuningError`.
- :mod:`.database`: :class:`TuningDatabase`, one folder per (TVM version, target).
  Records are appended one line at a time as they are measured, under a file lock
  so concurrent runs on one database do not tear each other's lines: killing a
  tuning run loses at most the batch in flight, and running the same command again
  continues where it stopped (``--trials N`` counts the records the database
  already holds for the model's workloads).  Models that share a workload share its
  records.  ``export``/:func:`import_file` move a target's database between
  machines as one file.
- :mod:`.tasks`: the distinct fused PrimFuncs of a model (:func:`extract_tasks`)
  and the budget split (:func:`allocate`).
- :mod:`.measure`: building candidates and measuring them on this machine or on a
  device over TVM's RPC tracker (:class:`RPC`): the builder cross-links a ``.so``
  for the device; a device that stops answering is retried with back-off, a
  candidate that keeps failing on a live device is skipped (recorded as failed),
  and a device that stays away ends the run with everything measured so far
  saved, to resume later (:class:`DeviceLost`).
- :mod:`.progress`: the terminal status line; :mod:`.search`: :func:`tune` itself;
  :mod:`.tracker`: the RPC tracker devices register with.
"""

from __future__ import annotations

from sliver.backends.tvm.tuning.budget import Budget, TuningError, format_duration, parse_duration
from sliver.backends.tvm.tuning.database import (
    RECORDS, WORKLOADS, TuningDatabase, TuningDatabaseWarning, cache_root, import_file, target_key, workload_hash,
)
from sliver.backends.tvm.tuning.measure import RPC, DeviceLost, device_present
from sliver.backends.tvm.tuning.progress import Progress
from sliver.backends.tvm.tuning.search import TuneReport, check_measurable, coverage, tune
from sliver.backends.tvm.tuning.tasks import Task, allocate, extract_tasks, fused_module
from sliver.backends.tvm.tuning.tracker import start_tracker

__all__ = ["Budget", "RPC", "TuningDatabase", "TuningDatabaseWarning", "TuningError", "DeviceLost", "Progress", "Task", "TuneReport",
           "RECORDS", "WORKLOADS", "allocate", "cache_root", "check_measurable", "coverage", "device_present",
           "extract_tasks", "format_duration", "fused_module", "import_file", "parse_duration", "start_tracker",
           "target_key", "tune", "workload_hash"]
