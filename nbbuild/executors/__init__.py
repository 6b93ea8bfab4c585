"""Executors: where rule bodies run.

Greenlets on the calling thread and on helper threads (`hubs`); process and Dask pools for bodies
run elsewhere (`pools`); what runs in a worker process (`worker`) and what the kernel does for a
body running elsewhere (`kernel`).

This package exports nothing itself: import the module that models what you need.
"""
