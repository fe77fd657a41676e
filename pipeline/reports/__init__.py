"""What evaluate writes for people: scores, figures, the model card."""
