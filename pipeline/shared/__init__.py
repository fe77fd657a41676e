"""What the stages share: params schema, stage runner, data files, model, training, tracking."""
