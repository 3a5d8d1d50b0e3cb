"""Training and conversion: photos to a dataset, the model, the two stages, TFLite conversion, parity,
metrics and the report. Imports TensorFlow only inside the functions that need it."""
