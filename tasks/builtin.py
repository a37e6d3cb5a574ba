"""The two MedFuse tasks: in-hospital mortality and 25-label phenotyping."""

from __future__ import annotations

from fusebench.data.labels import PHENOTYPE_LABELS
from fusebench.hookspecs import hookimpl
from fusebench.specs import TaskSpec

__all__ = ["IN_HOSPITAL_MORTALITY", "PHENOTYPES", "PHENOTYPING", "fusebench_register_tasks"]

# Label columns of the phenotyping listfile, in header order, spelt as the real header
# (packaged resources/phenotype_labels.json).
PHENOTYPES: tuple[str, ...] = PHENOTYPE_LABELS

# Phenotype types as defined by Harutyunyan et al. (2019), used for the paper's grouped AUROCs.
_MIXED = (
    "Cardiac dysrhythmias",
    "Conduction disorders",
    "Congestive heart failure; nonhypertensive",
    "Diabetes mellitus with complications",
    "Other liver diseases",
)
_CHRONIC = (
    "Chronic kidney disease",
    "Chronic obstructive pulmonary disease and bronchiectasis",
    "Coronary atherosclerosis and other heart disease",
    "Diabetes mellitus without complication",
    "Disorders of lipid metabolism",
    "Essential hypertension",
    "Hypertension with complications and secondary hypertension",
)
_ACUTE = tuple(p for p in PHENOTYPES if p not in _MIXED and p not in _CHRONIC)

IN_HOSPITAL_MORTALITY = TaskSpec(
    name="in-hospital-mortality",
    description="Predict death in hospital from the first 48 hours of the ICU stay.",
    labels=("y_true",),
    period_hours=48.0,
    default_cxr_window="48h",
)

PHENOTYPING = TaskSpec(
    name="phenotyping",
    description="Predict the 25 acute-care phenotypes coded at discharge from the whole ICU stay.",
    labels=PHENOTYPES,
    period_hours=None,
    default_cxr_window="full-stay",
    label_groups={"acute": _ACUTE, "mixed": _MIXED, "chronic": _CHRONIC},
)


@hookimpl
def fusebench_register_tasks() -> list[TaskSpec]:
    return [IN_HOSPITAL_MORTALITY, PHENOTYPING]
