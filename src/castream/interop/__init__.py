"""Bridges to other attribution libraries (optional extras, never required by castream itself):

- :mod:`castream.interop.captum`: any Captum attribution as a castream saliency method (``pip install
  castream[captum]``); also by name, ``saliency.get("captum:IntegratedGradients")``, so the runner and
  CLI take ``--methods captum:IntegratedGradients``;
- :mod:`castream.interop.quantus`: castream's methods as a Quantus ``explain_func`` (``pip install
  castream[quantus]``).
"""
