"""The gate before champion: behavioural checks (behaviour.py) and the champion rule (rule.py)."""
