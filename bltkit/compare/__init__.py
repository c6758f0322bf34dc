"""The patching-strategy comparison (``bltkit compare``): variants trained at a matched budget.

- ``config.py``  CompareConfig: the budget, the shared run settings, the entropy model, the variants
- ``entropy.py`` the entropy model the entropy-patched variant needs: trained once, calibrated
- ``runner.py``  plan and train each variant with the one loop, gather its figures
- ``report.py``  ``results.json``, ``results.md`` and ``bpb_vs_flops.png``
"""
