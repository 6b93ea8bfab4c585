"""The engine: what a build is made of, and how one runs.

Tasks and rules (`task`, `rule`), task keys from arguments (`arguments`), rule versions from the
code they reach (`version`, `code`), traces of what a run read (`trace`), what this process already
verified (`verified`: the red-green set). What the engine uses of a Build, made by the Build and
handed to it (`context`). The rebuilder (`rebuild`: whether a stored value may be reused, by
verifying and constructive traces with early cutoff, and the trace a run leaves). The scheduler
that brings tasks up to date (`scheduler`, with its parts `state`, `fetch` (values a running body
asks for) and `body` (running one body); `priority` orders ready tasks). Explaining a build without
running it (`explain`), what a run attached (`attachments`), and the inputs and effects of a body
besides other tasks: files it reads (`files`) and writes (`outputs`), environment variables
(`environment`), the global random generators (`randomness`), and how they are looked up
(`inputs`).

The engine imports no IPython and never prints. This package exports nothing itself: import the
module that models what you need (`nbbuild/__init__.py` is the public face).
"""
