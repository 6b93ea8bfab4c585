"""The store: values and build information kept on disk, signed, within bounds.

Layered from the bottom: the rows of one diskcache table (`table`), signed with this user's key
(`signing`) so that nothing another key wrote is ever unpickled (`foreign`); values pickled and
hashed in one pass (`pickling`, `serialisation`), large ones as value files (`valuefile`); what a
process knows of the traces (`index`); the store itself (`store`, with its parts `values`,
`inventory` and `tiering`), its quota and eviction (`eviction`), and values kept in memory
between builds (`memory`). Behind it, optionally, a shared tier a team uses (`shared`: object
storage or a shared folder, signed with a team key), kept in step with it (`sharing`) and
collected within its own quota (`shared_eviction`).

This package exports nothing itself: import the module that models what you need.
"""
