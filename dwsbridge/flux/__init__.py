"""The Flux adapter: dws-jobtap's job-manager semantics (`jobtap`), the `dws.*` service on the shared
lifecycle (`service`), submit-time validation (`validator`) and the real-Flux adapter (`realflux`).

The entry file is `flux/jobtap_plugin.py`; only `realflux` imports flux-python, and only when run.
"""
