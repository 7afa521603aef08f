"""Ownership verification: is a suspect encoder the victim, or derived from it?

- :mod:`sslaudit.ownership.dataset_inference` (Dziedzic et al., NeurIPS 2022): a GMM on the suspect's
  representations of the owner's private data; private vs public log-likelihood, one-sided t-test.
- :mod:`sslaudit.ownership.watermark` (Dziedzic et al., ICML 2022): the rotation watermark,
  ``train_watermarked`` embeds it; :mod:`sslaudit.ownership.watermark_verify` tests a suspect with the
  owner's head (binomial test against chance, and a rank test among fresh random heads).

Every test returns a :class:`~sslaudit.ownership.verdict.Verdict` (statistic, p-value, verdict at
alpha 0.01, test name, n). The submodules are imported by name (the function ``dataset_inference``
is not re-exported here, so it never hides its module).

>>> from sslaudit.ownership.verdict import Verdict
>>> Verdict.decide("dataset-inference", statistic=0.1, p_value=0.3, n=100).verdict
'independent'
"""
