"""Data cards for pools shared on the Hugging Face Hub.

`render.py` builds a pool's README.md from its pool.json (and scores.json): a YAML header of Hub
metadata plus a body from the Jinja template of the method's family (`<family>.md.j2`, each
extending `_base.md.j2`). `catalog.py` holds the facts the templates use: method families,
model licenses and the papers to cite.
"""
