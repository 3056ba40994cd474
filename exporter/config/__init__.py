"""The service's configuration: Settings (settings.py) from the environment and the config file's tables
(tables.py). Everything the rest of the service imports is named here."""

from exporter.config.settings import (
    DEFAULT_CONFIG,
    DEFAULT_DATABASE_URL,
    DEFAULT_FILE_CHUNK_BYTES,
    Settings,
    default_copy_parallel,
)
from exporter.config.tables import (
    DEFAULT_FORWARD_HEADERS,
    HOP_BY_HOP_HEADERS,
    UNFORWARDABLE_HEADERS,
    DatasetConfig,
    FileRootConfig,
    UpstreamConfig,
)

__all__ = ["DEFAULT_CONFIG", "DEFAULT_DATABASE_URL", "DEFAULT_FILE_CHUNK_BYTES", "DEFAULT_FORWARD_HEADERS",
           "HOP_BY_HOP_HEADERS", "UNFORWARDABLE_HEADERS", "DatasetConfig", "FileRootConfig", "Settings",
           "UpstreamConfig", "default_copy_parallel"]
