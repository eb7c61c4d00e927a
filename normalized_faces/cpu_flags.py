"""This CPU's feature flags, for the choices the package makes by measurement: fast_ops' forms
(AVX-512) and train's precision (AMX). Read once from Linux's /proc/cpuinfo; empty elsewhere."""

from __future__ import annotations

import functools


@functools.cache
def cpu_flags() -> frozenset:
    """The flags of /proc/cpuinfo (e.g. "avx512f", "amx_bf16"), or none where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return frozenset(cpuinfo.read().split())
    except OSError:
        return frozenset()
