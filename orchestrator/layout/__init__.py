"""Plan the MIG layout from the students' models: memory estimate, profile choice, packing, export.

Data flows one way: checkpoint (what a model is) -> estimate (what it needs on a slice) ->
geometry (which instance sets a GPU can hold) -> pack (profiles and layouts) -> render.
"""
