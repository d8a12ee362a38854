"""Restricted unpickling: plain containers of numpy arrays and nothing else.

Dataset fits, detections and body-model files come as pickles, and a pickle from an unknown
source can run arbitrary code when loaded. `SafeUnpickler` resolves only an allow-list of
globals: a few builtin types, `collections.OrderedDict`, the helpers pickle itself uses for
old-style objects (`copyreg._reconstructor`, `_codecs.encode`) and numpy's array / scalar /
dtype reconstruction functions (`numpy.core.*` is read as `numpy._core.*` on numpy >= 2, where
the old path only warns). Everything else is refused.

Two hooks let a caller widen or brand this:
- `extra_global(module, name)` (override it, or pass `extra_globals=`) may return an object to
  use for a global that is not on the list (e.g. stand-in classes); it is asked first;
- `refuse=` builds the exception raised for a refused global (default `pickle.UnpicklingError`),
  so the error can name the file and field in the caller's own exception type.

`load(source, ...)` unpickles a path or a bytes object in one call.
"""

import io
import os
import pickle

import numpy as np

# `long` / `unicode` appear in Python 2 pickles and are read as int / str.
SAFE_BUILTINS = frozenset({'object', 'set', 'frozenset', 'list', 'dict', 'tuple', 'slice',
                           'complex', 'bytearray', 'bytes', 'str', 'int', 'float', 'bool',
                           'long', 'unicode'})
_PY2_BUILTINS = {'long': 'int', 'unicode': 'str'}
SAFE_NUMPY = frozenset({'_reconstruct', 'ndarray', 'dtype', 'scalar', '_frombuffer'})


def default_refusal(module, name):
    return pickle.UnpicklingError(f'refusing to load the global {module}.{name} (only numpy '
                                  f'arrays in plain containers are accepted)')


class SafeUnpickler(pickle.Unpickler):
    """A `pickle.Unpickler` that resolves only the allow-listed globals (see the module doc).

    Args:
        file: binary file object to read from.
        extra_globals: optional callable (module, name) -> object or None; a non-None result is
            used for that global (checked before the allow-list).
        refuse: optional callable (module, name) -> exception raised for a refused global;
            default `default_refusal` (a `pickle.UnpicklingError`).
        encoding: for Python 2 pickles; 'latin1' keeps numpy byte buffers intact.
    """

    def __init__(self, file, *, extra_globals=None, refuse=None, encoding='latin1'):
        super().__init__(file, encoding=encoding)
        self._extra_globals = extra_globals
        self._refuse = refuse if refuse is not None else default_refusal
        self.refusal = None  # the exception raised for the last refused global, if any

    def extra_global(self, module, name):
        """Hook for globals beyond the allow-list: return the object to use, or None."""
        if self._extra_globals is None:
            return None
        return self._extra_globals(module, name)

    def find_class(self, module, name):
        extra = self.extra_global(module, name)
        if extra is not None:
            return extra
        if module in ('builtins', '__builtin__') and name in SAFE_BUILTINS:
            return super().find_class('builtins', _PY2_BUILTINS.get(name, name))
        if module == 'collections' and name == 'OrderedDict':
            return super().find_class(module, name)
        if module in ('copyreg', 'copy_reg') and name == '_reconstructor':
            return super().find_class('copyreg', name)
        if module == '_codecs' and name == 'encode':
            return super().find_class(module, name)
        if module == 'numpy' or module.startswith('numpy.'):
            actual = module
            if module.startswith('numpy.core') and hasattr(np, '_core'):
                actual = 'numpy._core' + module[len('numpy.core'):]
            if name in SAFE_NUMPY or actual == 'numpy.dtypes':
                return super().find_class(actual, name)
        self.refusal = self._refuse(module, name)
        raise self.refusal


def load(source, *, unpickler=SafeUnpickler, error=None, **unpickler_kwargs):
    """Unpickles `source` (a path or a bytes-like object) with a restricted unpickler.

    Args:
        source: str / os.PathLike path of a pickle file, or its bytes.
        unpickler: the `SafeUnpickler` (sub)class to use.
        error: optional callable message -> exception. If given, any failure while unpickling
            (a corrupt file, or a global refused by the default refusal) is re-raised as
            `error('cannot unpickle: <type>: <details>')`; an exception from a custom `refuse`
            hook is raised unchanged. Without it, exceptions propagate as they are.
        **unpickler_kwargs: passed to the unpickler (`extra_globals`, `refuse`, `encoding`).

    Errors opening / reading a path (OSError) are never wrapped.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        with open(os.fspath(source), 'rb') as f:
            data = f.read()
    reader = unpickler(io.BytesIO(data), **unpickler_kwargs)
    try:
        return reader.load()
    except Exception as e:  # corrupt pickles raise many exception types
        custom_refusal = e is reader.refusal and reader._refuse is not default_refusal
        if error is None or custom_refusal:
            raise
        raise error(f'cannot unpickle: {type(e).__name__}: {e}') from None
