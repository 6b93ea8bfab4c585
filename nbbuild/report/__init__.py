"""Reports: what a build did and is doing, for views to show.

The record of one build (`report`), live progress snapshots (`progress`), what builds cost and
saved (`metrics`), the text view on a terminal (`console`), and the one way seconds and sizes are
written (`formatting`).

Reports never touch the engine's state beyond what they are given, and never print: views do.
This package exports nothing itself: import the module that models what you need.
"""
