"""ml_collections configs, loaded with `config_flags.DEFINE_config_file` as `configs/<name>.py:<arg>`."""
