"""The gate a trained model passes before it may become champion: behavioural checks on moved
and noisy images (behaviour.py), and the champion rule (rule.py)."""
