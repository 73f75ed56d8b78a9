"""Pool scoring: alignment, diversity and distribution gap of 1:N pools, and selection by score.

Modules: `scorers` (the embedding models), `embeddings` (the content-keyed cache), `measures`
(the statistics, a package: alignment, diversity, Frechet distance, MMD^2, the gap, bootstraps,
one module each), `pool_scores` (scoring one pool; its docstring holds the exact definitions),
`store` (side-table layout), `report` (scores.json, PNG, comparison table).
"""
