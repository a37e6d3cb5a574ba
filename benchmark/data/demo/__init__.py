"""Synthetic MIMIC-shaped demo dataset: EHR and CXR trees in the exact MIMIC layout, no real data.

MIMIC is credentialed, so every command runs on this dataset when no data root is given. The
files, columns and value formats are those of MedFuse's ``mimic4extract`` output and of
MIMIC-CXR-JPG 2.0.0 (see ``fusebench.data.layout``), so the same readers serve demo and real data.

Generative model
----------------
Each ICU stay has a latent patient state of standard-normal factors. Chronic factors are drawn
per subject (shared by the subject's stays, plus a little stay-level noise): ``age``, ``heart``
(cardiac size), ``diabetes``, ``vascular`` (hypertension), ``renal``, ``copd``, ``arrhythmia``.
Acute factors are drawn per stay, with a few couplings (infection -> hemodynamic, infection ->
lung, heart -> fluid, lung/neuro -> respiratory): ``hemodynamic`` (shock), ``deterioration``,
``infection``, ``lung`` (infiltrates), ``fluid`` (overload), ``respiratory`` (failure,
ventilation above a threshold), ``neuro``, ``bleeding``.

What each modality shows:

- EHR (episode CSVs): heart rate, blood pressures, respiratory rate, O2 saturation, temperature,
  glucose, pH, FiO2 (ventilated stays), weight/height and the three GCS components follow the
  factors. The hemodynamic state worsens linearly over the first 48 h by ``deterioration``, so
  deteriorating patients have worsening vitals. Lung infiltrates lower O2 saturation only a little.
  Capillary refill rate and GCS total are never charted, as in MIMIC-IV.
- CXR (JPEG radiographs drawn with numpy): a thorax, lung fields with rib shadows, spine and
  mediastinum, a heart silhouette whose width tracks ``heart`` (cardiothoracic ratio) and a little
  ``fluid``, costophrenic blunting for effusions and perihilar haze for edema (``fluid``), patchy
  opacities (``lung``), basal atelectasis, and an endotracheal tube, nasogastric tube, central
  line and pacemaker for support devices, a nodule, a pneumothorax and hyperinflation (``copd``),
  then a random pose, blur and noise. AP (portable) films magnify the heart and lower contrast.
  The 14 CheXpert labels of each study follow the drawn findings (1.0 above a threshold, -1.0 in a
  borderline band, an explicit 0.0 for some clear negatives, empty otherwise).

Labels: in-hospital mortality is a logistic function of an EHR-visible part (hemodynamic state
after deterioration, neuro) and a CXR-visible part (lung infiltrates, fluid) of equal weight
(2.3 per standard deviation; the intercept is solved so that 12.5% of IHM stays die). On the small
size's paired test cohort (about 95 stays), logistic regressions on per-stay EHR summaries or on
12x12 downsampled pixels reach AUROCs of about 0.65-0.85 alone and 0.83-0.96 together (seeds 0-3);
with ~15 positives per test cohort, single-seed values vary by several points. Each of the 25 phenotypes is a logistic function of a
few factors (e.g. shock and diabetes mostly EHR, congestive heart failure and pneumonia mostly
CXR, renal failure mixed), with intercepts solved for realistic prevalences (5-40%).

Cohorts: ICU length of stay is log-normal (median about 46 h, at most 300 h); IHM stays are the
stays of at least 48 h (a subset of the phenotyping stays). About a quarter of IHM stays have an AP
film within the first 48 h (sicker patients more often); some have a second film, some a PA film
in the window, a film after 48 h, before ICU admission or after discharge; some subjects have films
but no ICU stay. Splits are subject-level (72% train, 8% val, 20% test).

Determinism: one ``numpy`` generator per part, seeded from ``(seed, part)``; sorted outputs, fixed
JPEG quality, no timestamps: the same size and seed give byte-identical files.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> root = generate_demo(Path(tempfile.mkdtemp()) / "demo", size="tiny", seed=0, progress=False)
    >>> sorted(p.name for p in root.iterdir())
    ['cxr', 'ehr', 'fusebench-demo.json']
"""

from __future__ import annotations

from fusebench.data.demo.generate import (
    GENERATOR_VERSION,
    MANIFEST,
    ensure_demo,
    generate_demo,
)
from fusebench.data.demo.model import DEMO_SIZES

__all__ = [
    "DEMO_SIZES",
    "GENERATOR_VERSION",
    "MANIFEST",
    "ensure_demo",
    "generate_demo",
]
