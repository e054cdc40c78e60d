"""Evaluation assets: eval_report and registered_adapter, per fine-tune job."""
