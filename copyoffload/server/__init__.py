"""The copy-offload server: HTTP concerns only (routes, auth, version, bodies, transport, launch).

What a copy request means and how it runs lives in ``copyoffload.jobs``.
"""
