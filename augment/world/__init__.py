"""The bundled sample world: procedural 64x64 scenes of simple shapes, with captions that are true.

One module a job:

| module | what it does |
|---|---|
| `scene` | a scene's content (1-3 objects: shape, colour, size, named position; a grey background) and random scenes |
| `render` | drawing a scene (render-only details: jitter, rotation, noise), re-rendered variants, object boxes |
| `captions` | true captions in several styles, from a lexicon of true synonyms only |
| `truth` | whether a caption or a referring expression is true of a scene (also of a source row's scene) |
| `expressions` | referring expressions that single out one object (visual grounding) |
| `writer` | the world written in the Karpathy layout, every image rebuilt alone from (seed, index) |

Captions are made from the content only, so a re-rendered variant of a scene is still described
correctly by every caption of the original. Everything is seeded with `random.Random`, so
`write_sample` with the same arguments writes byte-identical files.
"""
