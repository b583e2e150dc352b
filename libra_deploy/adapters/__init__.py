"""One module per external system; each implements a port of :mod:`libra_deploy.ports`."""
