"""The ground floor: what every layer of sliver may use and nothing else imports into.

``errors`` (the named errors a user sees), ``files`` (atomic writes), ``text`` (report
tables), ``platform`` (the host's CPU architecture, ELF checks) and ``numerics`` (output
error metrics).  Nothing here imports numpy-heavy, torch or TVM code beyond numpy, so
the deploy-side runtime uses it too.
"""
