"""The global joint table: the named keypoints whose canonical positions the model learns.

Each data spec (`data_specs/<name>.json`, read with `nlf_tf.specs.load_spec`) lists its joints in
file order (`joint_names`) and a `suffix` ('_coco', '_mads', ...). In the global table a joint is
called name + suffix ('lsho_coco'), so datasets with the same suffix share rows (COCO, COCO-WholeBody
and DensePose-COCO all use '_coco' for the 17 body joints) while different skeletons stay apart.
Specs with `"in_joint_table": false` (the parametric datasets AGORA and BEHAVE, whose joints come
from the body model's canonical space) contribute no rows.

Mirror rule (NLF, the same as `nlf_tf.model.canonical.split_joints`): a name starting with 'l' whose
partner 'r' + name[1:] exists is a left joint and that partner its right joint; every other joint is
a centre joint. The initial positions must be exactly left/right symmetric under this rule: a right
joint is its left partner with x negated, and centre joints have x = 0 (the learned offsets keep the
symmetry, NLF §6.4, so an asymmetric start could never be undone).

Canonical frame: metres, x = the person's left, y down, z forward, pelvis at the origin.
"""

import math

import numpy as np

from nlf_tf import specs

CATEGORIES = ('param', 'kp3d', 'dense', 'kp2d')

# Keys every dataset spec (not the demo spec) must have; see data_specs/README.md.
REQUIRED_KEYS = (
    'name', 'category', 'description', 'joint_names', 'suffix', 'root_joint', 'mirror_pairs',
    'files', 'thresholds', 'weight', 'canonical_positions', 'canonical_note')


def _load(spec):
    """A parsed spec from a spec name or an already parsed dict."""
    if isinstance(spec, str):
        return specs.load_spec(spec)
    if isinstance(spec, dict):
        return spec
    raise TypeError(f'expected a data spec name or a parsed spec dict, got {type(spec).__name__}')


def _spec_label(spec):
    return f'data spec {spec.get("name", "<unnamed>")!r}'


def mirror_partner_name(name):
    """'l' + rest <-> 'r' + rest (whether the partner exists is up to the caller); else None."""
    if name.startswith('l'):
        return 'r' + name[1:]
    if name.startswith('r'):
        return 'l' + name[1:]
    return None


def _check_joint_names(spec):
    label = _spec_label(spec)
    names = spec.get('joint_names')
    if (not isinstance(names, list) or not names
            or not all(isinstance(n, str) and n for n in names)):
        raise ValueError(f'{label}: field "joint_names" must be a non-empty list of non-empty '
                         f'strings')
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f'{label}: field "joint_names" has duplicates: {duplicates}')
    return names


def _suffix(spec):
    suffix = spec.get('suffix', '')
    if suffix is None:
        suffix = ''
    if not isinstance(suffix, str):
        raise ValueError(f'{_spec_label(spec)}: field "suffix" must be a string, got {suffix!r}')
    return suffix


def in_joint_table(spec):
    """Whether the spec's joints are rows of the global joint table (default True)."""
    spec = _load(spec)
    flag = spec.get('in_joint_table', True)
    if not isinstance(flag, bool):
        raise ValueError(f'{_spec_label(spec)}: field "in_joint_table" must be true or false')
    return flag


def spec_mirror_indices(spec):
    """int32 [J]: for each joint (spec order), the index of its mirror partner (itself for centre
    joints), from the spec's `mirror_pairs`, which must list exactly the pairs the naming rule gives
    (ValueError naming the spec, the field and the offending joint otherwise)."""
    spec = _load(spec)
    label = _spec_label(spec)
    names = _check_joint_names(spec)
    index = {n: i for i, n in enumerate(names)}
    pairs = spec.get('mirror_pairs', [])
    if not isinstance(pairs, list):
        raise ValueError(f'{label}: field "mirror_pairs" must be a list of [left, right] pairs')
    mirror = np.arange(len(names), dtype=np.int32)
    seen = set()
    for k, pair in enumerate(pairs):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(n, str) for n in pair)):
            raise ValueError(f'{label}: field "mirror_pairs"[{k}] must be a pair of joint names, '
                             f'got {pair!r}')
        for n in pair:
            if n not in index:
                raise ValueError(f'{label}: field "mirror_pairs"[{k}] names unknown joint {n!r} '
                                 f'(not in "joint_names")')
        left, right = pair if pair[0].startswith('l') else pair[::-1]
        if not (left.startswith('l') and mirror_partner_name(left) == right):
            raise ValueError(f'{label}: field "mirror_pairs"[{k}] {list(pair)!r} is not an '
                             f'l.../r... pair with the same rest of the name')
        if left in seen or right in seen:
            raise ValueError(f'{label}: field "mirror_pairs"[{k}]: joint listed twice')
        seen.update((left, right))
        mirror[index[left]], mirror[index[right]] = index[right], index[left]
    missing = [n for n in names if n.startswith('l') and mirror_partner_name(n) in index
               and n not in seen]
    if missing:
        raise ValueError(f'{label}: field "mirror_pairs" lacks the pairs of {missing} (the naming '
                         f'rule makes them left joints with a right partner)')
    return mirror


def spec_positions(spec):
    """float32 [J, 3]: the spec's `canonical_positions` in `joint_names` order (ValueError naming
    the spec and the joint when one is missing, extra or not 3 finite numbers)."""
    spec = _load(spec)
    label = _spec_label(spec)
    names = _check_joint_names(spec)
    positions = spec.get('canonical_positions')
    if not isinstance(positions, dict):
        raise ValueError(f'{label}: field "canonical_positions" must map joint names to [x, y, z]')
    missing = [n for n in names if n not in positions]
    if missing:
        raise ValueError(f'{label}: field "canonical_positions" has no position for joint(s) '
                         f'{missing}')
    extra = sorted(set(positions) - set(names))
    if extra:
        raise ValueError(f'{label}: field "canonical_positions" has unknown joint(s) {extra}')
    rows = []
    for n in names:
        p = positions[n]
        if (not isinstance(p, (list, tuple)) or len(p) != 3
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                           and math.isfinite(c) for c in p)):
            raise ValueError(f'{label}: field "canonical_positions", joint {n!r}: expected 3 finite '
                             f'numbers, got {p!r}')
        rows.append(p)
    return np.array(rows, np.float32).reshape(len(names), 3)


def validate_spec(spec):
    """Checks a dataset spec (the six dataset specs; not the demo spec): required keys, category,
    joint names, mirror pairs, root joint, weight, thresholds and files; for table specs also the
    canonical positions and their exact mirror symmetry. Returns the parsed spec."""
    spec = _load(spec)
    label = _spec_label(spec)
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise ValueError(f'{label}: missing field(s) {missing}')
    if spec['category'] not in CATEGORIES:
        raise ValueError(f'{label}: field "category" must be one of {CATEGORIES}, '
                         f'got {spec["category"]!r}')
    names = _check_joint_names(spec)
    _suffix(spec)
    spec_mirror_indices(spec)
    root = spec['root_joint']
    if root is not None and root not in names:
        raise ValueError(f'{label}: field "root_joint" must be null or one of "joint_names", '
                         f'got {root!r}')
    weight = spec['weight']
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ValueError(f'{label}: field "weight" must be a positive number, got {weight!r}')
    for key in ('thresholds', 'files'):
        if not isinstance(spec[key], dict):
            raise ValueError(f'{label}: field {key!r} must be an object')
    for key, value in spec['thresholds'].items():
        # Readers convert thresholds with float(); keep them plain numbers.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'{label}: field "thresholds.{key}" must be a number, got {value!r}')
    splits = spec['files'].get('splits')
    if not isinstance(splits, dict) or not splits:
        raise ValueError(f'{label}: field "files.splits" must map split names to their files')
    for split, entries in splits.items():
        for role, entry in (entries.items() if isinstance(entries, dict) else [(None, None)]):
            if not (isinstance(entry, dict) and isinstance(entry.get('path'), str)
                    and entry.get('kind') in ('file', 'dir', 'glob')):
                raise ValueError(f'{label}: field "files.splits.{split}.{role}" must be an object '
                                 f'with "path" and "kind" (file, dir or glob)')
    if in_joint_table(spec):
        _check_symmetry(table_joint_names(spec), spec_positions(spec),
                        {n: spec['name'] for n in table_joint_names(spec)})
    return spec


def table_joint_names(spec):
    """The spec's global-table names (joint name + suffix) in `joint_names` order; [] for a spec
    with `"in_joint_table": false`."""
    spec = _load(spec)
    if not in_joint_table(spec):
        return []
    suffix = _suffix(spec)
    return [n + suffix for n in _check_joint_names(spec)]


def mirror_permutation(names):
    """int32 [J]: index of each name's mirror partner by NLF's rule (itself for centre joints)."""
    names = list(names)
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names):
        raise ValueError('mirror_permutation: names contain duplicates')
    perm = np.arange(len(names), dtype=np.int32)
    for i, n in enumerate(names):
        if n.startswith('l') and ('r' + n[1:]) in index:
            j = index['r' + n[1:]]
            perm[i], perm[j] = j, i
    return perm


def _check_symmetry(names, positions, owner):
    """Exact mirror symmetry of a table (owner: name -> spec name, for the error message)."""
    perm = mirror_permutation(names)
    for i, n in enumerate(names):
        j = perm[i]
        if j == i:
            if positions[i, 0] != 0:
                raise ValueError(
                    f'data spec {owner[n]!r}: field "canonical_positions", joint {n!r} is a centre '
                    f'joint (no l/r partner in the table) and needs x = 0, got x = '
                    f'{float(positions[i, 0])}')
        elif n.startswith('l'):
            expected = positions[i] * np.array([-1, 1, 1], np.float32)
            if not np.array_equal(positions[j], expected):
                specs_involved = sorted({owner[n], owner[names[j]]})
                raise ValueError(
                    f'data spec(s) {specs_involved}: field "canonical_positions": {names[j]!r} '
                    f'{positions[j].tolist()} is not the exact mirror image (x negated) of {n!r} '
                    f'{positions[i].tolist()}')


def build_joint_table(spec_names):
    """(names list, positions float32 [J, 3]): the specs' table joints concatenated in the given
    order. A name that several specs define appears once (at its first occurrence) and must have the
    same position everywhere (else ValueError naming both specs). Checks that every joint has a
    position, that each spec's mirror pairs agree with the naming rule and that the whole table is
    exactly mirror symmetric. `spec_names` may also hold parsed spec dicts."""
    if isinstance(spec_names, (str, dict)):
        spec_names = [spec_names]
    names, rows, owner, row_of = [], [], {}, {}
    for item in spec_names:
        spec = _load(item)
        spec_name = spec.get('name', item if isinstance(item, str) else '<unnamed>')
        if not in_joint_table(spec):
            continue
        spec_mirror_indices(spec)
        root = spec.get('root_joint')
        if root is not None and root not in spec['joint_names']:
            raise ValueError(f'{_spec_label(spec)}: field "root_joint" must be null or one of '
                             f'"joint_names", got {root!r}')
        positions = spec_positions(spec)
        for name, pos in zip(table_joint_names(spec), positions):
            if name in owner:
                previous = rows[row_of[name]]
                if not np.array_equal(previous, pos):
                    raise ValueError(
                        f'joint {name!r} has conflicting canonical positions: '
                        f'{previous.tolist()} in data spec {owner[name]!r} but {pos.tolist()} in '
                        f'data spec {spec_name!r}')
                continue
            owner[name] = spec_name
            row_of[name] = len(names)
            names.append(name)
            rows.append(pos)
    positions = np.array(rows, np.float32).reshape(len(names), 3)
    _check_symmetry(names, positions, owner)
    return names, positions


def joint_rows(table_names, spec_name):
    """int32 [J_spec]: the global-table row of each of the spec's joints, in the spec's
    `joint_names` order (empty for a spec not in the joint table). ValueError listing the joints
    the table lacks."""
    spec = _load(spec_name)
    index = {n: i for i, n in enumerate(table_names)}
    wanted = table_joint_names(spec)
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ValueError(f'{_spec_label(spec)}: joints {missing} are not in the global joint table '
                         f'(build it with build_joint_table including this spec)')
    return np.array([index[n] for n in wanted], np.int32)
