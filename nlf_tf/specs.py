"""Locating and reading the JSON data specs (skeleton definitions and the like).

The canonical copies live in the repository's top-level `data_specs/` folder. A built package
carries them inside itself as `nlf_tf/_data_specs/` (setup.py copies them at build time), so
that a non-editable `pip install .` works too. `load_spec` looks there first and then in
`data_specs/` next to the package folder (a source checkout or an editable install).
"""

import json
import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def spec_search_dirs():
    """The folders searched for specs, in order of preference."""
    return [
        os.path.join(_PACKAGE_DIR, '_data_specs'),
        os.path.join(os.path.dirname(_PACKAGE_DIR), 'data_specs'),
    ]


def spec_path(name):
    """Path of the spec file `<name>.json`; FileNotFoundError naming every place looked at."""
    if not isinstance(name, str) or not name or os.sep in name or name.startswith('.'):
        raise ValueError(f'spec name must be a plain file stem like "demo", got {name!r}')
    candidates = [os.path.join(d, f'{name}.json') for d in spec_search_dirs()]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f'data spec {name!r} not found; looked for: {", ".join(candidates)}')


def load_spec(name):
    """Parses and returns the spec `<name>.json` as plain Python data (a fresh copy per call)."""
    path = spec_path(name)
    with open(path, encoding='utf-8') as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f'data spec {path} is not valid JSON: {e}') from e


def threshold(spec, key, override=None):
    """`override` as a float if given, else the spec's `thresholds[key]`; ValueError naming the
    spec and key if it has none."""
    if override is not None:
        return float(override)
    thresholds = spec.get('thresholds') or {}
    if key not in thresholds:
        raise ValueError(f'data spec {spec.get("name")!r} lacks thresholds.{key}')
    return float(thresholds[key])
