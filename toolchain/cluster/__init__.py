"""Several workers or devices: the TensorFlow-free supervisor (TF_CONFIG, --cluster, --local-workers)
and the tf.distribute side (strategies, collectives, sharded photos; a one-process run is a
cluster of one)."""
