"""The engine: what a build is made of, and how one runs.

Rules and tasks (`rule`, `task`), the versions of rules (`version`), traces of what a run read
(`trace`), what this process already verified (`verified`), one task's body run (`body`), the
scheduler that brings tasks up to date (`scheduler`, `priority`), explaining a build without
running it (`explain`), and the inputs and effects of a body besides other tasks: files it reads
(`files`) and writes (`outputs`), environment variables (`environment`), the global random
generators (`randomness`) and how they are looked up (`inputs`).

The engine imports no IPython and never prints. This package exports nothing itself: import the
module that models what you need (`nbbuild/__init__.py` is the public face).
"""
