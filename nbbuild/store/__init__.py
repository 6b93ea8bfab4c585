"""The store: values and build information kept on disk, signed, within bounds.

Layered from the bottom: the rows of one diskcache table (`table`), signed with this user's key
(`signing`) so that nothing another key wrote is ever unpickled (`foreign`); values pickled and
hashed in one pass (`pickling`, `serialisation`), large ones as value files (`valuefile`); what a
process knows of the traces (`index`); the store itself (`store`, with its part `values`), its
quota and eviction (`eviction`), and values kept in memory between builds (`memory`).

This package exports nothing itself: import the module that models what you need.
"""
