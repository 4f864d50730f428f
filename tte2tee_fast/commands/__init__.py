"""The commands of the ``tte2tee`` command line, one module per area; the click group that
registers them is :mod:`tte2tee_fast.cli`. Commands only parse options and call the library:
library imports stay inside the command functions, so ``tte2tee --help`` imports no torch."""
