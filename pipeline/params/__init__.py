"""params.yaml: the stages' params (config.py) and the tools' settings (tools.py), validated."""
