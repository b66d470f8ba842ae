"""A faithful stand-in for DWS on Kubernetes: API server, webhook, controller, nnf-sos, test driver.

Test infrastructure only: product code never imports it. Start it with `testenv/dws-standin start`.
"""
