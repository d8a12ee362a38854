"""Shared set-up of the subprocess scripts of tests/test_distribute.py (run as `python FILE`)."""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/ (tiny_cfg)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # the repository (nlf_tf)


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago (for a local cluster); OSError
    if none can be bound."""
    import socket
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def fast_graphs():
    """Grappler's graph rewrites take most of the first step's time on this tiny model and do
    not change what these scripts check."""
    import tensorflow as tf
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})


def report(**values):
    """The scripts' result: one JSON line the test parses."""
    print('RESULT ' + json.dumps(values), flush=True)


def weights_digest(variables):
    import numpy as np
    arrays = [np.asarray(v.numpy() if hasattr(v, 'numpy') else v, np.float64) for v in variables]
    return dict(abs_sum=float(sum(np.abs(a).sum() for a in arrays)),
                weighted=float(sum((a.ravel() * np.arange(1, a.size + 1) % 7).sum()
                                   for a in arrays)))
