"""Tokenization with the base model's own chat template (`tokenize`, also what validation reports)
and packing into fixed-length windows that never let one example attend to another (`pack`,
`build`). Import the submodules: this package imports nothing itself, so validation can use the
tokenizer without loading torch."""
