"""Bridges to other explanation toolkits: :mod:`captum_saco.integrations.quantus`
(SaCo as a Quantus metric; needs ``pip install quantus``)."""
