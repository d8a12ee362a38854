"""Training data: dataset readers (-> `Example` records), the prepare step (-> TFRecord shards)
and the in-graph tf.data training pipeline (augmentation, mixing, the trainer's micro-batches).
"""
