"""warmfront configuration: the shipped default YAML and its typed models."""
from config.loader import (ConfigError, default_config_dir, file_json_schema, json_schema, load_config,
                           load_config_text)
from config.models import Config, Pool, PoolsConfig, RoutingConfig

__all__ = [
    "Config",
    "ConfigError",
    "Pool",
    "PoolsConfig",
    "RoutingConfig",
    "default_config_dir",
    "file_json_schema",
    "json_schema",
    "load_config",
    "load_config_text",
]
