"""absl flag definitions of nlf-tf: one flag per entry of `nlf_tf.config.FLAG_TABLE`.

Only the command-line entry points call `define_flags()` and read the parsed values (through
`nlf_tf.config.config_from_flags`). Flag files work as usual with absl: `--flagfile=FILE`.
"""

from absl import flags

from nlf_tf import config

_DEFINERS = {
    'str': flags.DEFINE_string,
    'int': flags.DEFINE_integer,
    'float': flags.DEFINE_float,
    'bool': flags.DEFINE_boolean,
}


def define_flags(flag_values=flags.FLAGS):
    """Defines every setting as an absl flag (idempotent for the same FlagValues)."""
    for name, kind, default, help_text in config.FLAG_TABLE:
        if name in flag_values:
            continue
        _DEFINERS[kind](name, default, help_text, flag_values=flag_values)
    return flag_values
