"""Training assets: training_data and adapter, per fine-tune job."""
