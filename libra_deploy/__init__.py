"""libra-deploy: the domain core and its adapters. Imports neither Flask nor Celery."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("libra-deploy")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
