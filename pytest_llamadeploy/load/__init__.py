"""Load testing with Locust, always as a subprocess (never imported: it patches the process with gevent).

Modules: ``runner`` (run Locust, parse its results), ``stats`` (its JSON stats),
``gate`` (the performance gate), ``options`` (the scale-out options). Nothing is
imported here: the plugin imports ``options`` in every pytest run of the venv,
and that must not pay for the rest.
"""
