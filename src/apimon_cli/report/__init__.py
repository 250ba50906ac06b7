"""`apimon report`: usage, revenue, headroom and pricing figures of a period, as data, HTML and SVG.

``figures`` computes (pure), ``source`` reads the ledger and runs the invoice engine, ``html``/``svg``/``page``
render. The portal (``apimon_cli.portal``) reuses all of them.
"""
