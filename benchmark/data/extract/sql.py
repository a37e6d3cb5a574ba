"""SQL of the event stages: item filter, validation, unit cleaning, one value per time, pivot.

Every rule below is stated once, with the profile that changes it. ``medfuse-2022`` reproduces
MedFuse's ``mimic4extract`` (a port of mimic3-benchmarks) as it ran on MIMIC-IV v1.0, documented
behaviour included; ``corrected`` fixes what is wrong (see ``PROFILES`` in the pipeline).
"""

from __future__ import annotations

__all__ = [
    "CATEGORICAL",
    "CHANNELS",
    "CLEANED",
    "NA_STRINGS",
    "cleaned_value_sql",
    "dedupe_key_sql",
]

# The 17 variables in the episode header order (the original sorts them by name: "pH" last).
CHANNELS: tuple[str, ...] = (
    "Capillary refill rate", "Diastolic blood pressure", "Fraction inspired oxygen",
    "Glascow coma scale eye opening", "Glascow coma scale motor response",
    "Glascow coma scale total", "Glascow coma scale verbal response", "Glucose", "Heart Rate",
    "Height", "Mean blood pressure", "Oxygen saturation", "Respiratory rate",
    "Systolic blood pressure", "Temperature", "Weight", "pH",
)
CATEGORICAL = frozenset({"Glascow coma scale eye opening", "Glascow coma scale motor response",
                         "Glascow coma scale total", "Glascow coma scale verbal response"})
# The variables the original passes through a cleaning function (its values become numbers);
# the others keep the text of the table.
CLEANED = frozenset({"Capillary refill rate", "Diastolic blood pressure", "Systolic blood pressure",
                     "Fraction inspired oxygen", "Oxygen saturation", "Glucose", "pH",
                     "Temperature", "Weight", "Height"})
# pandas 1.x's default NA strings: the original reads the events with them, so such a value is
# empty and its row dropped.
NA_STRINGS: tuple[str, ...] = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "n/a", "nan", "null",
)
_PLAIN_NUMBER = r"^(\d+(\.\d*)?|\.\d+)$"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def cleaned_value_sql(profile: str) -> str:
    """SQL of the cleaned numeric value of an event row (columns ``variable``, ``value``,
    ``num`` = value as a double or NULL, ``is_text`` = the subject's values are not all numbers,
    ``label`` = lower-cased MIMIC label, ``unit`` = lower-cased ``valueuom``); NULL drops the row.
    """
    corrected = profile == "corrected"
    # Glucose, pH, O2 saturation: a text value that is not a plain number ("ERROR") is dropped.
    # The original checks this for text only: a subject whose values are all numbers keeps e.g.
    # negative values.
    lab = f"CASE WHEN is_text AND NOT regexp_matches(value, {_sql_text(_PLAIN_NUMBER)}) " \
          "THEN NULL ELSE num END"
    if corrected:
        # By unit: FiO2 above 1 is a percentage, at most 1 a fraction.
        fio2 = "CASE WHEN num > 1 THEN num / 100 ELSE num END"
        temperature = ("CASE WHEN contains(unit, 'f') THEN (num - 32) * 5.0 / 9 "
                       "WHEN contains(unit, 'c') THEN num "
                       "WHEN num >= 79 THEN (num - 32) * 5.0 / 9 ELSE num END")
        weight = ("CASE WHEN contains(unit, 'oz') THEN num / 16.0 * 0.453592 "
                  "WHEN contains(unit, 'lb') THEN num * 0.453592 ELSE num END")
        height = "CASE WHEN unit IN ('inch', 'in', 'inches') THEN round_even(num * 2.54, 0) " \
                 "ELSE num END"
    else:
        # The original's "is_str" test is np.array(map(...)) under Python 3: one truthy object,
        # so every FiO2 value is divided by 100 (fractions too).
        fio2 = "num / 100"
        # Its unit test looks for 'F' in a lower-cased string (never true): only v >= 79 converts.
        temperature = "CASE WHEN num >= 79 THEN (num - 32) * 5.0 / 9 ELSE num END"
        # By label: 'Admission Weight (lbs.)' converts; ounces are divided by 16 first.
        weight = ("CASE WHEN contains(label, 'oz') THEN num / 16.0 * 0.453592 "
                  "WHEN contains(label, 'lb') THEN num * 0.453592 ELSE num END")
        # By label: no MIMIC-IV height label contains 'in' ('Height' is inches): none converts.
        height = "CASE WHEN contains(label, 'in') THEN round_even(num * 2.54, 0) ELSE num END"
    cases = {
        "Capillary refill rate": "CASE WHEN value IN ('Normal <3 secs', 'Brisk') THEN 0.0 "
                                 "WHEN value IN ('Abnormal >3 secs', 'Delayed') THEN 1.0 END",
        "Diastolic blood pressure": "CASE WHEN contains(value, '/') THEN TRY_CAST(regexp_extract("
                                    r"value, '^(\d+)/(\d+)$', 2) AS DOUBLE) ELSE num END",
        "Systolic blood pressure": "CASE WHEN contains(value, '/') THEN TRY_CAST(regexp_extract("
                                   r"value, '^(\d+)/(\d+)$', 1) AS DOUBLE) ELSE num END",
        "Fraction inspired oxygen": fio2,
        "Oxygen saturation": f"CASE WHEN ({lab}) <= 1 THEN ({lab}) * 100 ELSE ({lab}) END",
        "Glucose": lab,
        "pH": lab,
        "Temperature": temperature,
        "Weight": weight,
        "Height": height,
    }
    branches = " ".join(f"WHEN {_sql_text(name)} THEN {sql}" for name, sql in cases.items())
    # Other numeric channels (heart rate, blood pressure mean, respiratory rate): the number.
    return f"CASE variable {branches} ELSE num END"


def dedupe_key_sql(profile: str) -> tuple[str, str]:
    """(numeric key, text key) SQL ordering the values of one variable at one time; the largest
    is kept.

    The original sorts the subject's events by (time, variable, value) and keeps the last: a
    cleaned variable compares as numbers, the others as the text of the table when any of the
    subject's values is text (so '100' < '80'), as numbers otherwise. ``corrected`` compares
    numeric channels as numbers always.
    """
    cleaned = ", ".join(_sql_text(name) for name in sorted(CLEANED))
    categorical = ", ".join(_sql_text(name) for name in sorted(CATEGORICAL))
    if profile == "corrected":
        return (f"CASE WHEN variable IN ({categorical}) THEN NULL ELSE cleaned END",
                f"CASE WHEN variable IN ({categorical}) THEN value END")
    return (f"CASE WHEN variable IN ({cleaned}) OR NOT is_text THEN cleaned END",
            f"CASE WHEN variable IN ({cleaned}) OR NOT is_text THEN NULL ELSE value END")
