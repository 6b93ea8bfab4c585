"""The notebook layer: cells as rules, magics, widgets. Thin: it only calls the Build API."""
