"""Structure sets: canonical names, synonyms, colours, label priorities (see ``structure_set``)."""

from dlas.structures.structure_set import (
    BUILTIN_STRUCTURE_SETS,
    Code,
    InputQAThresholds,
    NameMapping,
    Postprocess,
    QAThresholds,
    RTROIInterpretedType,
    StructureDef,
    StructureSet,
    load_structure_set,
    name_stem,
    tg263_problems,
)

__all__ = [
    "BUILTIN_STRUCTURE_SETS",
    "Code",
    "InputQAThresholds",
    "NameMapping",
    "Postprocess",
    "QAThresholds",
    "RTROIInterpretedType",
    "StructureDef",
    "StructureSet",
    "load_structure_set",
    "name_stem",
    "tg263_problems",
]
