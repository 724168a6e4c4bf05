"""The files shipped with ``sdekit.studies``: the digits score model (``load_model("digits")``, made by
``sdekit train --data digits --seed 0``) and the digits classifier (``python -m sdekit.studies._classifier``);
docs/trained_models.md says how each was made."""
